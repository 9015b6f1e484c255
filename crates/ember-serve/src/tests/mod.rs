//! The HTTP side's hardening, request by request through [`Server::router`] (no
//! sockets): the API key, refused fields, clipped quotes, the body's type, the `Host`
//! check and CORS. The model is the tiny Qwen3 of the test fixtures.

// Burn 0.22 deprecates the ndarray backend; it is pinned on purpose (Cargo.toml).
#![allow(deprecated)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use burn::prelude::Device;
use ember_model::Dtype;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::{ServeError, Server, ServerOptions};

mod batching;
mod logprobs;

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
        ("logprobs", json!(1)),
        ("top_logprobs", json!(3)),
        ("top_logprobs", json!(-1)),
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
        ("logprobs", json!(6)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
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
    let limits = |header: u64, idle: u64, connections: usize| {
        ServerOptions {
            header_timeout: Duration::from_secs(header),
            idle_timeout: Duration::from_secs(idle),
            max_connections: connections,
            shutdown_grace: Duration::ZERO,
            ..ServerOptions::default()
        }
        .check()
    };
    assert!(limits(1, 1, 1).is_ok());
    for (header, idle, connections) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
        assert!(
            matches!(
                limits(header, idle, connections),
                Err(ServeError::BadOption { .. })
            ),
            "{header} {idle} {connections}"
        );
    }
    assert!(matches!(key(" sk"), Err(ServeError::BadOption { .. })));
    assert!(matches!(key("clé"), Err(ServeError::BadOption { .. })));
    let batch = |max_batch: usize, kv_cache_bytes: Option<usize>, prefill_chunk: usize| {
        ServerOptions {
            batch: crate::BatchLimits {
                max_batch,
                kv_cache_bytes,
                prefill_chunk,
                prefix_cache: true,
            },
            ..ServerOptions::default()
        }
        .check()
        .map_err(|e| e.to_string())
    };
    assert!(batch(1, None, 1).is_ok());
    assert!(batch(1, Some(1), 1).is_ok());
    for (bad, option) in [
        (batch(0, None, 1), "max batch"),
        (batch(1, Some(0), 1), "KV cache MB"),
        (batch(1, None, 0), "prefill chunk"),
    ] {
        assert_eq!(bad, Err(format!("{option} 0: it must be at least 1")));
    }
    let precision = |precision: Dtype| {
        ServerOptions {
            precision,
            ..ServerOptions::default()
        }
        .check()
        .map_err(|e| e.to_string())
    };
    assert!(precision(Dtype::F32).is_ok());
    assert!(precision(Dtype::Bf16).is_ok());
    for bad in [Dtype::F16, Dtype::Q4_0] {
        assert_eq!(
            precision(bad),
            Err(format!("precision {bad}: products compute in f32 or bf16"))
        );
    }
}

/// Issue 26: rendering and tokenizing large bodies runs on tokio's blocking threads,
/// so the async thread (one here: a current-thread runtime, where work done on it
/// would hold every other request) answers `/health` while they are prepared. Were
/// they prepared on it, `/health` would come after them.
#[tokio::test(flavor = "current_thread")]
async fn large_bodies_are_prepared_off_the_async_threads() {
    let server = server(ServerOptions::default());
    let router = server.router();
    // About 300 kB of text each: a prompt far longer than the context, refused with a
    // 400 once it has been rendered and tokenized (a few hundred milliseconds).
    let words: String = (0..35_000).map(|i| format!("w{} ", i % 5000)).collect();
    let body = chat(json!({"messages": [{"role": "user", "content": words}]}));
    let started = Instant::now();
    let heavy: Vec<_> = (0..2)
        .map(|_| {
            let (router, body) = (router.clone(), body.clone());
            tokio::spawn(async move {
                let answer = send(&router, post("/v1/chat/completions", &body)).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    // Let them start.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let (status, _, health) = send(&router, get("/health")).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let health_answered = started.elapsed();
    for task in heavy {
        let (answer, answered) = task.await.unwrap();
        assert_error(&answer, StatusCode::BAD_REQUEST, Some("messages"));
        assert_eq!(answer.2["error"]["code"], "context_length_exceeded");
        assert!(
            health_answered < answered,
            "/health answered after {health_answered:?}, a large body after {answered:?}"
        );
    }
}

/// A server on a free loopback port: its address, a sender that makes its shutdown
/// future complete, and the task serving it.
async fn serving(
    options: ServerOptions,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ServeError>>,
) {
    let server = server(options);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    (address, stop, task)
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("cannot write: {e}"),
        }
    }
}

/// What a connection reads: the bytes until the server closed it (`closed`), or what
/// came within `wait`.
struct Read {
    text: String,
    closed: bool,
}

/// Reads until the server closes the connection, a whole response (head and
/// `Content-Length` body) came when `one_response`, or `wait` passed.
async fn read(stream: &TcpStream, wait: Duration, one_response: bool) -> Read {
    let deadline = tokio::time::Instant::now() + wait;
    let mut bytes = Vec::new();
    loop {
        if one_response && whole_response(&bytes) {
            break;
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => break,
            Ok(ready) => ready.unwrap(),
        }
        let mut buffer = [0u8; 4096];
        match stream.try_read(&mut buffer) {
            Ok(0) => {
                return Read {
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                    closed: true,
                };
            }
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Reset: closed with unread bytes.
            Err(_) => {
                return Read {
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                    closed: true,
                };
            }
        }
    }
    Read {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        closed: false,
    }
}

fn whole_response(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    bytes.len() >= end + 4 + length
}

/// `GET /health` on a kept-alive connection.
const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Issue 26: the header timeout cuts off a connection that sends half a head (or
/// nothing), a kept-alive connection may wait for its next request longer than that
/// (until the idle timeout), and a body that stops coming gets a 408.
#[tokio::test]
async fn slow_heads_idle_connections_and_stalled_bodies_are_cut_off() {
    let header = Duration::from_millis(300);
    let idle = Duration::from_millis(700);
    let (address, stop, task) = serving(ServerOptions {
        header_timeout: header,
        idle_timeout: idle,
        ..ServerOptions::default()
    })
    .await;
    // Closed after `limit` from `since`, give or take the watchdog's tick.
    let closed_in_time = |got: Read, since: Instant, limit: Duration| {
        let after = since.elapsed();
        assert!(got.closed && got.text.is_empty(), "{}", got.text);
        assert!(
            // Generous above: a loaded CI machine may be slow to run the watchdog.
            after >= limit - Duration::from_millis(20) && after < limit + Duration::from_secs(3),
            "closed after {after:?}, not {limit:?}"
        );
    };
    let half_head = async {
        let started = Instant::now();
        let stream = TcpStream::connect(address).await.unwrap();
        write_all(&stream, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
        closed_in_time(
            read(&stream, Duration::from_secs(5), false).await,
            started,
            header,
        );
    };
    let silent = async {
        let started = Instant::now();
        let stream = TcpStream::connect(address).await.unwrap();
        closed_in_time(
            read(&stream, Duration::from_secs(5), false).await,
            started,
            header,
        );
    };
    let stalled_body = async {
        let stream = TcpStream::connect(address).await.unwrap();
        write_all(
            &stream,
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
        )
        .await;
        let got = read(&stream, Duration::from_secs(5), false).await;
        assert!(got.text.starts_with("HTTP/1.1 408"), "{}", got.text);
        assert!(
            got.text.contains("the request body stopped coming"),
            "{}",
            got.text
        );
    };
    let kept_alive = async {
        let stream = TcpStream::connect(address).await.unwrap();
        write_all(&stream, HEALTH).await;
        let got = read(&stream, Duration::from_secs(5), true).await;
        assert!(got.text.contains(" 200 OK"), "{}", got.text);
        // Idle for longer than the header timeout, it still serves...
        tokio::time::sleep(header + Duration::from_millis(150)).await;
        write_all(&stream, HEALTH).await;
        let got = read(&stream, Duration::from_secs(5), true).await;
        assert!(got.text.contains(" 200 OK"), "{}", got.text);
        // ...and closes after the idle timeout.
        let answered = Instant::now();
        closed_in_time(
            read(&stream, Duration::from_secs(5), false).await,
            answered,
            idle,
        );
    };
    tokio::join!(half_head, silent, stalled_body, kept_alive);

    let metrics = TcpStream::connect(address).await.unwrap();
    write_all(
        &metrics,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    let text = read(&metrics, Duration::from_secs(5), true).await.text;
    assert!(
        text.contains("ember_connections_closed_total{reason=\"header_timeout\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("ember_connections_closed_total{reason=\"idle_timeout\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("ember_open_connections 1\n"), "{text}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Issue 26: beyond `max_connections`, a new connection waits to be served; an idle
/// connection closes to make room for it, while connections busy with a request (a
/// head half-sent, here) keep their place until they time out.
#[tokio::test]
async fn beyond_the_connection_cap_new_connections_wait_for_room() {
    let header = Duration::from_millis(700);
    let (address, stop, task) = serving(ServerOptions {
        header_timeout: header,
        idle_timeout: Duration::from_secs(30),
        max_connections: 2,
        ..ServerOptions::default()
    })
    .await;
    // Two kept-alive connections, idle after one request each.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(address).await.unwrap();
        write_all(&stream, HEALTH).await;
        assert!(
            read(&stream, Duration::from_secs(5), true)
                .await
                .text
                .contains(" 200 OK")
        );
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A third is served at once: one idle connection made room.
    let asked = Instant::now();
    let third = TcpStream::connect(address).await.unwrap();
    write_all(&third, HEALTH).await;
    let got = read(&third, Duration::from_secs(5), true).await;
    assert!(got.text.contains(" 200 OK"), "{}", got.text);
    // Long before the idle connections' own timeout (30 s).
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let mut closed = 0;
    for stream in &idle {
        closed += usize::from(read(stream, Duration::from_millis(50), false).await.closed);
    }
    assert_eq!(closed, 1);
    drop((idle, third));

    // Two connections busy sending a head: the next waits until they time out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut busy = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(address).await.unwrap();
        write_all(&stream, b"GET /health HTTP/1.1\r\n").await;
        busy.push(stream);
    }
    let waiting = TcpStream::connect(address).await.unwrap();
    write_all(&waiting, HEALTH).await;
    let early = read(&waiting, header / 2, true).await;
    assert!(early.text.is_empty() && !early.closed, "{}", early.text);
    let got = read(&waiting, Duration::from_secs(5), true).await;
    assert!(got.text.contains(" 200 OK"), "{}", got.text);
    let after = started.elapsed();
    assert!(
        after >= header && after < header + Duration::from_secs(3),
        "served after {after:?}"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Issue 26: when the shutdown future completes, connections with no request in
/// flight (a head half-sent) close at once, a request in flight (its body half-sent)
/// has the grace period to finish, then `serve` returns anyway.
#[tokio::test]
async fn shutdown_ends_within_the_grace_period_whatever_the_clients_do() {
    // Long enough that closing the idle connection "at once" is told apart from closing
    // it at the end of the grace period, even on a loaded machine.
    let grace = Duration::from_secs(2);
    let (address, stop, task) = serving(ServerOptions {
        shutdown_grace: grace,
        ..ServerOptions::default()
    })
    .await;
    let half_head = TcpStream::connect(address).await.unwrap();
    write_all(&half_head, b"POST /v1/completions HTTP/1.1\r\nHost: 127").await;
    let half_body = TcpStream::connect(address).await.unwrap();
    write_all(
        &half_body,
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    stop.send(()).unwrap();
    let got = read(&half_head, Duration::from_secs(5), false).await;
    assert!(got.closed, "{}", got.text);
    assert!(stopped.elapsed() < grace, "{:?}", stopped.elapsed());
    tokio::time::timeout(grace + Duration::from_secs(5), task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    let took = stopped.elapsed();
    assert!(took >= grace, "{took:?}");
    assert!(read(&half_body, Duration::from_secs(1), false).await.closed);
    // Nothing listens any more.
    assert!(TcpStream::connect(address).await.is_err());
}

/// One sample of a Prometheus text exposition: its name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of a Prometheus text exposition, checked line by line: `# HELP` and
/// `# TYPE` comments, then `name{label="value",...} number` or `name number`, each
/// sample's family typed before it.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut typed: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let parts: Vec<&str> = comment.splitn(3, ' ').collect();
            assert!(
                parts.len() == 3 && ["HELP", "TYPE"].contains(&parts[0]),
                "{line}"
            );
            if parts[0] == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram"].contains(&parts[2]),
                    "{line}"
                );
                typed.push((parts[1].to_string(), parts[2].to_string()));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let labels = inner
                    .split(',')
                    .map(|pair| {
                        let (key, quoted) =
                            pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                        let value = quoted
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("{line}"));
                        (key.to_string(), value.to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{line}"
        );
        let family_typed = typed.iter().any(|(family, kind)| {
            family == name
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family)))
        });
        assert!(family_typed, "no # TYPE before {line}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

/// The value of the sample `name` with exactly these labels.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .2
}

/// Issue 26: `/metrics` in Prometheus' text format, without the API key but behind
/// the Host check: after a completion and a streamed chat, the requests, tokens and
/// latencies they add up to.
#[tokio::test]
async fn metrics_count_requests_tokens_and_latencies() {
    let server = server(ServerOptions {
        api_key: Some("sk-secret".into()),
        ..ServerOptions::default()
    });
    let router = server.router();
    let authorized = |mut request: Request<Body>| {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer sk-secret".parse().unwrap());
        request
    };
    let (status, _, completion) = send(
        &router,
        authorized(post(
            "/v1/completions",
            &completion(json!({"max_tokens": 5})),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{completion}");
    let request = authorized(post(
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})),
    ));
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let events = String::from_utf8(events.to_vec()).unwrap();
    let usage: Value = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|chunk| chunk.get("usage").filter(|u| u.is_object()).cloned())
        .unwrap();
    // Refused: wrong key, unknown path.
    assert_eq!(
        send(&router, get("/v1/models")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&router, get("/nothing")).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, headers, body) = send(&router, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = body["raw"].as_str().unwrap();
    let samples = parse_metrics(text);
    let tokens = |usage: &Value, field: &str| usage[field].as_u64().unwrap() as f64;
    let generated =
        tokens(&completion["usage"], "completion_tokens") + tokens(&usage, "completion_tokens");
    let prompt = tokens(&completion["usage"], "prompt_tokens") + tokens(&usage, "prompt_tokens");
    assert_eq!(
        sample(&samples, "ember_generated_tokens_total", &[]),
        generated
    );
    assert_eq!(sample(&samples, "ember_prompt_tokens_total", &[]), prompt);
    let requests = |endpoint: &str, status: &str| {
        sample(
            &samples,
            "ember_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    };
    assert_eq!(requests("/v1/completions", "200"), 1.0);
    assert_eq!(requests("/v1/chat/completions", "200"), 1.0);
    assert_eq!(requests("/v1/models", "401"), 1.0);
    assert_eq!(requests("other", "404"), 1.0);
    assert_eq!(
        sample(&samples, "ember_time_to_first_token_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        sample(
            &samples,
            "ember_time_to_first_token_seconds_bucket",
            &[("le", "+Inf")]
        ),
        2.0
    );
    assert_eq!(
        sample(&samples, "ember_inter_token_latency_seconds_count", &[]),
        generated - 2.0
    );
    assert!(sample(&samples, "ember_inter_token_latency_seconds_sum", &[]) > 0.0);
    for endpoint in ["/v1/completions", "/v1/chat/completions"] {
        assert_eq!(
            sample(
                &samples,
                "ember_request_duration_seconds_count",
                &[("endpoint", endpoint)]
            ),
            1.0
        );
    }
    assert_eq!(sample(&samples, "ember_running_sequences", &[]), 0.0);
    assert_eq!(sample(&samples, "ember_waiting_sequences", &[]), 0.0);
    assert_eq!(
        sample(&samples, "ember_model_info", &[("model", MODEL)]),
        1.0
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, _, _)| n == "ember_inter_token_latency_seconds_bucket")
        .map(|s| s.2)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // Another Host is refused, as everywhere.
    let answer = send(&router, with_host(Some("evil.example"), "/metrics")).await;
    assert_error(&answer, StatusCode::FORBIDDEN, None);
}
