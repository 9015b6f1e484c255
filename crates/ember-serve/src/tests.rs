//! The HTTP side's hardening, request by request through [`Server::router`] (no
//! sockets): the API key, refused fields, clipped quotes, the body's type, the `Host`
//! check and CORS. The model is the tiny Qwen3 of the test fixtures.

// Burn 0.22 deprecates the ndarray backend; it is pinned on purpose (Cargo.toml).
#![allow(deprecated)]

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use burn::prelude::Device;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{ServeError, Server, ServerOptions};

const MODEL: &str = "tiny";

fn server(options: ServerOptions) -> Server {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
    let device = Device::ndarray();
    let loaded = ember_model::load_model(&dir, None, &device).unwrap();
    let tokenizer = ember_model::model_tokenizer(&loaded).unwrap();
    let options = ServerOptions {
        model_id: MODEL.into(),
        ..options
    };
    Server::start(loaded.model, tokenizer, device, options)
}

/// A request with a loopback `Host`, as curl and the SDKs send it.
fn request(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:8080")
}

fn post(path: &str, body: &Value) -> Request<Body> {
    request(Method::POST, path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    request(Method::GET, path).body(Body::empty()).unwrap()
}

/// Status, headers and body (JSON, or `{"raw": text}`) of the router's answer.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (parts.status, parts.headers, body)
}

/// Asserts an OpenAI error object with this status (and `param`, if given).
fn assert_error(answer: &(StatusCode, HeaderMap, Value), status: StatusCode, param: Option<&str>) {
    let (got, _, body) = answer;
    assert_eq!(*got, status, "{body}");
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
    }
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn completion(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn the_api_key_is_checked_whole_and_the_bearer_scheme_in_any_case() {
    let server = server(ServerOptions {
        api_key: Some("sk-secret".into()),
        ..ServerOptions::default()
    });
    let router = server.router();
    let with = |authorization: Option<&str>| {
        let mut builder = request(Method::GET, "/v1/models");
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::empty()).unwrap()
    };
    for good in ["Bearer sk-secret", "bearer sk-secret", "BEARER  sk-secret"] {
        let (status, _, body) = send(&router, with(Some(good))).await;
        assert_eq!(status, StatusCode::OK, "{good}: {body}");
        assert_eq!(body["data"][0]["id"], MODEL);
    }
    for bad in [
        None,
        Some("Bearer sk-secre"),
        Some("Bearer sk-secretX"),
        Some("Bearer SK-SECRET"),
        Some("Bearer "),
        Some("Bearer"),
        Some("Basic sk-secret"),
        Some("sk-secret"),
    ] {
        let answer = send(&router, with(bad)).await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, None);
        assert_eq!(answer.2["error"]["code"], "invalid_api_key", "{bad:?}");
    }
    // The page and /health need no key.
    assert_eq!(send(&router, get("/health")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_empty_api_key_is_an_error_at_start_not_a_server_refusing_everything() {
    for key in ["", "   "] {
        let options = ServerOptions {
            api_key: Some(key.into()),
            port: 0,
            ..ServerOptions::default()
        };
        assert!(matches!(options.check(), Err(ServeError::EmptyApiKey)));
    }
    let server = server(ServerOptions {
        api_key: Some(String::new()),
        port: 0,
        ..ServerOptions::default()
    });
    assert!(matches!(server.bind().await, Err(ServeError::EmptyApiKey)));
    // A router made anyway accepts no key at all, the empty one included.
    let router = server.router();
    let empty = request(Method::GET, "/v1/models")
        .header(header::AUTHORIZATION, "Bearer ")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, empty).await.0, StatusCode::UNAUTHORIZED);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = server.serve(listener, std::future::ready(())).await;
    assert!(matches!(served, Err(ServeError::EmptyApiKey)), "{served:?}");
    assert!(ServerOptions::default().check().is_ok());
}

#[tokio::test]
async fn unsupported_fields_are_refused_naming_the_field() {
    let server = server(ServerOptions::default());
    let router = server.router();
    let chat_fields = [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("tool_choice", json!("auto")),
        ("functions", json!([{"name": "f"}])),
        ("function_call", json!("auto")),
        ("response_format", json!({"type": "json_object"})),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
        ),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("logit_bias", json!({"50256": -100})),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("n", json!(2)),
    ];
    for (field, value) in chat_fields {
        let answer = send(
            &router,
            post("/v1/chat/completions", &chat(json!({ field: value }))),
        )
        .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, Some(field));
    }
    let completion_fields = [
        ("echo", json!(true)),
        ("best_of", json!(2)),
        ("suffix", json!(" the end")),
        ("logprobs", json!(1)),
        ("logprobs", json!(0)),
        ("presence_penalty", json!(1)),
        ("n", json!(3)),
    ];
    for (field, value) in completion_fields {
        let answer = send(
            &router,
            post("/v1/completions", &completion(json!({ field: value }))),
        )
        .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, Some(field));
    }

    // What clients send by default, or values that ask for what happens anyway.
    let harmless = chat(json!({
        "response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0.0,
        "logprobs": false, "top_logprobs": 0, "logit_bias": {}, "tool_choice": "none",
        "tools": null, "n": 1, "user": "someone", "seed": 1, "metadata": {"a": "b"},
        "store": false, "parallel_tool_calls": true, "stream": false,
        "stream_options": {"include_usage": true},
    }));
    let (status, _, body) = send(&router, post("/v1/chat/completions", &harmless)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let harmless = completion(json!({
        "echo": false, "best_of": 1, "suffix": null, "logprobs": null, "user": "someone",
    }));
    let (status, _, body) = send(&router, post("/v1/completions", &harmless)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_unknown_model_s_name_is_not_echoed_whole() {
    let server = server(ServerOptions::default());
    let router = server.router();
    let long = "m".repeat(100_000);
    let answer = send(
        &router,
        post("/v1/chat/completions", &chat(json!({ "model": long }))),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, Some("model"));
    let message = answer.2["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("`{}…`", "m".repeat(64))),
        "{message}"
    );
    assert!(message.len() < 200, "{message}");
    // A short name is quoted as it is.
    let answer = send(
        &router,
        post("/v1/completions", &completion(json!({"model": "gpt-4"}))),
    )
    .await;
    assert!(
        answer.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`gpt-4`")
    );
}

#[tokio::test]
async fn bodies_must_be_declared_json() {
    let server = server(ServerOptions::default());
    let router = server.router();
    // An unknown model is the quick answer of a body that was read.
    let body = completion(json!({"model": "other"})).to_string();
    let typed = |content_type: Option<&str>| {
        let mut builder = request(Method::POST, "/v1/completions");
        if let Some(value) = content_type {
            builder = builder.header(header::CONTENT_TYPE, value);
        }
        builder.body(Body::from(body.clone())).unwrap()
    };
    for good in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/json; charset=\"utf-8\"",
    ] {
        let (status, _, body) = send(&router, typed(Some(good))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{good}: {body}");
    }
    for bad in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("application/json; charset=latin1"),
        Some("application/json; x=y"),
    ] {
        let answer = send(&router, typed(bad)).await;
        assert_error(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE, None);
    }
    // GETs carry no body.
    assert_eq!(send(&router, get("/v1/models")).await.0, StatusCode::OK);
}

fn with_host(host: Option<&str>, path: &str) -> Request<Body> {
    let mut builder = Request::builder().uri(path);
    if let Some(host) = host {
        builder = builder.header(header::HOST, host);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn on_loopback_only_loopback_and_allowed_hosts_are_answered() {
    let loopback = server(ServerOptions {
        allowed_hosts: vec!["My.Box".into()],
        ..ServerOptions::default()
    });
    let router = loopback.router();
    for good in [
        "localhost",
        "localhost:8080",
        "LOCALHOST:1",
        "127.0.0.1",
        "127.0.0.1:8080",
        "127.5.6.7:80",
        "[::1]",
        "[::1]:8080",
        "[::ffff:127.0.0.1]:8080",
        "my.box",
        "MY.BOX:9000",
    ] {
        for path in ["/health", "/v1/models", "/"] {
            let (status, _, body) = send(&router, with_host(Some(good), path)).await;
            assert_eq!(status, StatusCode::OK, "{good} {path}: {body}");
        }
    }
    for bad in [
        None,
        Some("evil.example"),
        Some("evil.example:8080"),
        Some("127.0.0.1.evil.example"),
        Some("localhost.evil.example:8080"),
        Some("10.0.0.1"),
        Some("[::2]:8080"),
        Some("localhost:80x"),
        Some("other.box"),
    ] {
        for path in ["/health", "/v1/models", "/"] {
            let answer = send(&router, with_host(bad, path)).await;
            assert_error(&answer, StatusCode::FORBIDDEN, None);
            assert_eq!(answer.2["error"]["code"], "host_not_allowed");
        }
    }
    // A POST for another host is refused before anything else.
    let mut chat = post("/v1/chat/completions", &chat(json!({})));
    chat.headers_mut()
        .insert(header::HOST, "attacker.example".parse().unwrap());
    assert_eq!(send(&router, chat).await.0, StatusCode::FORBIDDEN);

    // `*` allows any host; on another address than loopback no host is checked.
    let any = server(ServerOptions {
        allowed_hosts: vec!["*".into()],
        ..ServerOptions::default()
    });
    let everywhere = server(ServerOptions {
        host: "0.0.0.0".into(),
        ..ServerOptions::default()
    });
    for server in [any, everywhere] {
        let (status, _, body) = send(
            &server.router(),
            with_host(Some("evil.example"), "/v1/models"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn cors_headers_only_for_the_named_origins() {
    let preflight = |origin: &str| {
        request(Method::OPTIONS, "/v1/chat/completions")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type, x-stainless-os",
            )
            .body(Body::empty())
            .unwrap()
    };
    let from = |origin: &str| {
        let mut request = get("/v1/models");
        request
            .headers_mut()
            .insert(header::ORIGIN, origin.parse().unwrap());
        request
    };

    // By default: no CORS at all.
    let plain = server(ServerOptions::default());
    let router = plain.router();
    let (status, headers, _) = send(&router, from("https://evil.example")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    let (status, headers, _) = send(&router, preflight("https://evil.example")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    let cors = server(ServerOptions {
        cors_origins: vec!["https://app.example".into(), "http://localhost:3000".into()],
        ..ServerOptions::default()
    });
    let router = cors.router();
    let (status, headers, _) = send(&router, preflight("https://app.example")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    let methods = headers[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
        "authorization, content-type, x-stainless-os"
    );
    let (status, headers, _) = send(&router, from("http://localhost:3000")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://localhost:3000"
    );
    assert!(
        headers
            .get_all(header::VARY)
            .iter()
            .any(|v| v.to_str().unwrap().contains("origin"))
    );
    // An answer to an actual request, even an error, carries the header.
    let mut refused = post("/v1/completions", &completion(json!({"model": "other"})));
    refused
        .headers_mut()
        .insert(header::ORIGIN, "https://app.example".parse().unwrap());
    let (status, headers, _) = send(&router, refused).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    // Other origins get nothing.
    let (_, headers, _) = send(&router, from("https://evil.example")).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    let (status, headers, _) = send(&router, preflight("https://evil.example")).await;
    assert_ne!(status, StatusCode::NO_CONTENT);
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));

    let any = server(ServerOptions {
        cors_origins: vec!["*".into()],
        ..ServerOptions::default()
    });
    let (_, headers, _) = send(&any.router(), from("https://anywhere.example")).await;
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[test]
fn options_no_browser_or_client_could_use_are_refused() {
    let check = |origins: &[&str], hosts: &[&str]| {
        ServerOptions {
            cors_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..ServerOptions::default()
        }
        .check()
    };
    for good in [
        "https://app.example",
        "http://localhost:3000",
        "http://[::1]:8080",
        "*",
    ] {
        assert!(check(&[good], &[]).is_ok(), "{good}");
    }
    for bad in ["https://app.example/", "app.example", "https://", ""] {
        assert!(
            matches!(check(&[bad], &[]), Err(ServeError::BadOption { .. })),
            "{bad}"
        );
    }
    assert!(check(&[], &["my.box", "my.box:8080", "*"]).is_ok());
    for bad in ["", "http://my.box", "my box"] {
        assert!(
            matches!(check(&[], &[bad]), Err(ServeError::BadOption { .. })),
            "{bad}"
        );
    }
    let key = |key: &str| {
        ServerOptions {
            api_key: Some(key.into()),
            ..ServerOptions::default()
        }
        .check()
    };
    assert!(key("sk-1 2").is_ok());
    assert!(matches!(key(" sk"), Err(ServeError::BadOption { .. })));
    assert!(matches!(key("clé"), Err(ServeError::BadOption { .. })));
}
