//! `ember serve` over real HTTP on 127.0.0.1: the OpenAI endpoints answer what the
//! CLI answers for the same greedy request, streamed or whole; bad requests get
//! OpenAI-style errors; concurrent clients are all answered; a client that leaves
//! stops its generation; SIGTERM shuts the server down cleanly.
//! (The official Python SDK, a browser and a load test: scripts/serve/.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const KEY: &str = "sk-test";

/// A running server; killed when dropped. Its log is collected in `log`.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Self {
        let mut child = ember()
            .env("EMBER_LOG", "info")
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(url.to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()));
        Self { child, url, log }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut request = Self::agent().get(format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.call().unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    }

    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let mut response = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {KEY}"))
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text})),
        )
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    /// The `data:` payloads of a streamed answer, `[DONE]` included.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let mut response = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {KEY}"))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let reader = BufReader::new(response.body_mut().as_reader());
        reader
            .lines()
            .map(Result::unwrap)
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// One raw HTTP/1.1 request (`Connection: close` is added); the status and the
    /// whole answer, headers included. For headers ureq sets itself (`Host`).
    fn raw(&self, head: &str, body: &str) -> (u16, String) {
        let address = self.url.trim_start_matches("http://");
        let mut socket = TcpStream::connect(address).unwrap();
        write!(
            socket,
            "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not HTTP: {answer}"));
        (status, answer)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to end, at most `limit`: its status and
    /// how long it took.
    #[cfg(unix)]
    fn terminate_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "still running {:?} after SIGTERM: {}",
                started.elapsed(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture(name: &str) -> String {
    workspace()
        .join("tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

fn cli_json(args: &[&str]) -> Value {
    let o = ember().args(args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn chat_body(message: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": "tiny-qwen3",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": message},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

#[test]
fn the_api_answers_as_the_cli_does() {
    let model = fixture("tiny-qwen3");
    let server = Server::start(&model, &["--api-key", KEY]);

    let (status, body) = server.get("/health", None);
    assert_eq!(status, 200, "{body}");
    let (status, page) = server.get("/", None);
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("/v1/chat/completions"));
    let (status, body) = server.get("/v1/models", None);
    assert_eq!(status, 401, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let (status, body) = server.get("/v1/models", Some(KEY));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny-qwen3");
    // Prometheus' metrics need no key, as /health.
    let (status, metrics) = server.get("/metrics", None);
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("# TYPE ember_generated_tokens_total counter\n")
            && metrics.contains("ember_requests_total{endpoint=\"/v1/models\",status=\"401\"} 1\n"),
        "{metrics}"
    );

    // A chat completion equals `ember chat --message` with the same system prompt.
    let want = cli_json(&[
        "chat",
        "--model",
        &model,
        "--system",
        "Be brief.",
        "--message",
        "Hello!",
        "--max-new-tokens",
        "20",
        "--json",
    ]);
    let (status, chat) = server.post("/v1/chat/completions", &chat_body("Hello!", 20, false));
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["content"], want["text"]);
    let generated = want["generated_ids"].as_array().unwrap().len();
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        want["prompt_ids"].as_array().unwrap().len()
    );
    assert_eq!(chat["usage"]["completion_tokens"], generated);
    let finish = if generated < 20 { "stop" } else { "length" };
    assert_eq!(chat["choices"][0]["finish_reason"], finish);

    // The same, streamed: the pieces add up to the text, then finish, usage, [DONE].
    let events = server.stream("/v1/chat/completions", &chat_body("Hello!", 20, true));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want["text"].as_str().unwrap());
    let finished = &chunks[chunks.len() - 2];
    assert_eq!(finished["choices"][0]["finish_reason"], finish);
    assert_eq!(chunks.last().unwrap()["usage"], chat["usage"]);

    // A completion equals `ember generate`.
    let want = cli_json(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "12",
        "--json",
    ]);
    let body = json!({"model": "tiny-qwen3", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0});
    let (status, completion) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["choices"][0]["text"], want["text"]);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = server.stream("/v1/completions", &streamed);
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, want["text"].as_str().unwrap());

    // A stop string ends the text before it.
    let full = want["text"].as_str().unwrap();
    if let Some(stop) = full.get(3..5).filter(|s| !s.trim().is_empty()) {
        let mut body = body.clone();
        body["stop"] = json!([stop]);
        let (_, stopped) = server.post("/v1/completions", &body);
        let cut = &full[..full.find(stop).unwrap()];
        assert_eq!(stopped["choices"][0]["text"], cut);
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let server = Server::start(&fixture("tiny-qwen3"), &["--api-key", KEY]);
    let error_of = |(status, body): (u16, Value)| {
        (
            status,
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            body,
        )
    };
    let (status, message, _) = error_of(server.post_raw("/v1/chat/completions", b"{\"model\": "));
    assert_eq!(status, 400);
    assert!(message.contains("not valid JSON"), "{message}");
    let (status, message, _) = error_of(server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-qwen3", "messages": "hi"}),
    ));
    assert_eq!(status, 400);
    assert!(message.contains("invalid type"), "{message}");
    let (status, _, body) = error_of(server.post(
        "/v1/chat/completions",
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
    ));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let long = "word ".repeat(5000);
    let (status, message, body) = error_of(server.post(
        "/v1/completions",
        &json!({"model": "tiny-qwen3", "prompt": long}),
    ));
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["code"], "context_length_exceeded",
        "{message}"
    );
    let (status, message, _) = error_of(server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-qwen3", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}),
    ));
    assert_eq!(status, 400);
    assert!(message.contains("temperature"), "{message}");
    let (status, message, _) = error_of(server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-qwen3", "messages": [{"role": "wizard", "content": "hi"}]}),
    ));
    assert_eq!(status, 400);
    assert!(message.contains("wizard"), "{message}");
    // A body over the limit is refused from its Content-Length, before it is read (a
    // client still sending it could see the connection reset instead of the answer,
    // so this one announces 5 MiB and sends only the start).
    let address = server.url.trim_start_matches("http://").to_string();
    let mut socket = TcpStream::connect(&address).unwrap();
    write!(
        socket,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        5 << 20,
        " ".repeat(1024)
    )
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = [0u8; 64];
    let read = socket.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (status, body) = server.get("/v2/nothing", None);
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_object());
    // Still answering.
    let (status, _) = server.post(
        "/v1/completions",
        &json!({"model": "tiny-qwen3", "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200);
}

#[test]
fn concurrent_clients_are_all_answered_and_a_client_that_leaves_stops_its_generation() {
    let server = Arc::new(Server::start(&fixture("tiny-qwen3"), &[]));
    let body =
        json!({"model": "tiny-qwen3", "prompt": "The sky is", "max_tokens": 8, "temperature": 0});
    let (_, first) = server.post("/v1/completions", &body);
    let want = first["choices"][0]["text"].clone();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| server.post("/v1/completions", &body))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        for (status, answer) in thread.join().unwrap() {
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["choices"][0]["text"], want);
        }
    }

    // A streamed request for thousands of tokens, abandoned after its first event.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut socket = TcpStream::connect(&address).unwrap();
    let request = json!({"model": "tiny-qwen3", "prompt": "Go on:", "max_tokens": 4000, "stream": true, "temperature": 0, "stop": ["never-appears"]}).to_string();
    write!(
        socket,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{request}",
        request.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let _ = socket.read(&mut first).unwrap();
    drop(socket);
    let started = Instant::now();
    // The generation stops wherever it is: still queued ("skipped") or running.
    let stopped = |log: &str| {
        log.contains("cancelled after") || log.contains("the client left while it waited")
    };
    while !stopped(&server.log()) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not cancelled: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = server.post("/v1/completions", &body);
    assert_eq!(status, 200);
}

/// SIGTERM ends the server within its shutdown grace period even with clients that
/// never finish their requests (issue 26; it used to take SIGKILL): a connection with
/// half a head is closed at once, one whose body stopped halfway holds its request in
/// flight, so the server waits `--shutdown-grace`, closes it and exits with 0.
#[cfg(unix)]
#[test]
fn sigterm_shuts_the_server_down_within_the_grace_period() {
    let mut server = Server::start(&fixture("tiny-gpt2-a"), &["--shutdown-grace", "1"]);
    let (status, _) = server.get("/health", None);
    assert_eq!(status, 200);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut half_head = TcpStream::connect(&address).unwrap();
    write!(
        half_head,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Ty"
    )
    .unwrap();
    let mut half_body = TcpStream::connect(&address).unwrap();
    write!(
        half_body,
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\": "
    )
    .unwrap();
    // Both reached the server.
    let (status, _) = server.get("/health", None);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    let (status, took) = server.terminate_within(Duration::from_secs(6));
    assert!(status.success(), "{status:?}: {}", server.log());
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let log = server.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        log.contains("1 connection(s) still open after the shutdown grace period"),
        "{log}"
    );
    // Both connections were closed: reading ends.
    for mut socket in [half_head, half_body] {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
    }
}

/// Gemma 3 behind the server: its chat template, sliding-window cache and stop ids give
/// the reply `ember chat` gives (checked there against transformers).
#[test]
fn a_gemma3_model_is_served() {
    let model = fixture("tiny-gemma3");
    let server = Server::start(&model, &[]);
    let want = cli_json(&[
        "chat",
        "--model",
        &model,
        "--system",
        "You are a helpful assistant.",
        "--message",
        "Every effort moves you. What moves you?",
        "--max-new-tokens",
        "16",
        "--json",
    ]);
    let body = json!({
        "model": "tiny-gemma3",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Every effort moves you. What moves you?"},
        ],
        "max_tokens": 16,
        "temperature": 0,
    });
    let (status, chat) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["choices"][0]["message"]["content"], want["text"]);
    assert_eq!(
        chat["usage"]["completion_tokens"],
        want["generated_ids"].as_array().unwrap().len()
    );
    assert_eq!(
        chat["usage"]["prompt_tokens"],
        want["prompt_ids"].as_array().unwrap().len()
    );
}

/// Issue 26's hardening through the real binary: an empty key stops `ember serve` at
/// once, the flags reach the server (the unit tests of ember-serve check each
/// behaviour in detail).
#[test]
fn the_http_side_is_hardened() {
    let model = fixture("tiny-qwen3");
    // An empty key, from the flag or the variable, is a one-line error, before the
    // model is loaded.
    let o = ember()
        .args(["serve", "--model", &model, "--port", "0", "--api-key", ""])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--api-key (or EMBER_API_KEY) is empty");
    let o = ember()
        .env("EMBER_API_KEY", "")
        .args(["serve", "--model", &model, "--port", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--api-key (or EMBER_API_KEY) is empty");
    let o = ember()
        .args(["serve", "--model", &model, "--port", "0"])
        .args(["--cors-origin", "https://app.example/"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--cors-origin https://app.example/");
    let o = ember()
        .args(["serve", "--model", &model, "--port", "0"])
        .args(["--max-connections", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--max-connections 0");
    let o = ember()
        .args(["serve", "--model", &model, "--port", "0"])
        .args(["--header-timeout", "0"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--header-timeout 0");
    for flag in ["--max-batch", "--kv-cache-mb", "--prefill-chunk"] {
        let o = ember()
            .args(["serve", "--model", &model, "--port", "0", flag, "0"])
            .output()
            .unwrap();
        assert_one_line_error(&o, &format!("{flag} 0: it must be at least 1"));
    }

    let server = Server::start(
        &model,
        &[
            "--api-key",
            KEY,
            "--allowed-host",
            "my.box",
            "--cors-origin",
            "https://app.example",
        ],
    );
    let address = server.url.trim_start_matches("http://").to_string();
    let models = |host: &str, extra: &str| {
        server.raw(
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: bearer {KEY}{extra}"
            ),
            "",
        )
    };
    // The scheme in any case; loopback names and the allowed host, any port.
    for host in [address.as_str(), "localhost:1234", "my.box:8080"] {
        let (status, answer) = models(host, "");
        assert_eq!(status, 200, "{host}: {answer}");
    }
    // DNS rebinding: another name for 127.0.0.1.
    let (status, answer) = models("attacker.example:8080", "");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("host_not_allowed"), "{answer}");
    // CORS for the named origin only.
    let (_, answer) = models(&address, "\r\nOrigin: https://app.example");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{answer}"
    );
    let (_, answer) = models(&address, "\r\nOrigin: https://evil.example");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{answer}"
    );
    let (status, answer) = server.raw(
        &format!("OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type"),
        "",
    );
    assert_eq!(status, 204, "{answer}");
    // A body that is not declared JSON.
    let body = json!({"model": "tiny-qwen3", "prompt": "hi", "max_tokens": 1}).to_string();
    let (status, answer) = server.raw(
        &format!("POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: text/plain"),
        &body,
    );
    assert_eq!(status, 415, "{answer}");
    // An unsupported field, named.
    let (status, error) = server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny-qwen3", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
    );
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "tools");
    assert_eq!(error["error"]["type"], "invalid_request_error");
}

/// A copy of the tiny Qwen3 whose chat template loops ten billion times (issue 26: it
/// hung `chat --message`, and two such requests blocked every endpoint of `serve` and
/// its SIGTERM).
#[cfg(unix)]
fn model_with_an_endless_template(parent: &std::path::Path) -> String {
    let source = workspace().join("tests/fixtures/tiny-qwen3");
    // The same directory name: the server's model id.
    let dir = parent.join("tiny-qwen3");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = json!(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}"
    );
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir.to_str().unwrap().to_string()
}

/// An endless chat template is cut off by its step budget: `chat --message` ends with a
/// one-line error, and `serve` answers two such requests with a 400 naming the
/// template while `/health` keeps answering, then shuts down on SIGTERM at once.
#[cfg(unix)]
#[test]
fn an_endless_chat_template_is_refused_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_with_an_endless_template(dir.path());
    let started = Instant::now();
    let chat = ember()
        .args(["chat", "--model", &model, "--message", "Hi"])
        .output()
        .unwrap();
    assert_one_line_error(&chat, "chat template did not finish within");
    assert!(started.elapsed() < Duration::from_secs(60));

    let mut server = Server::start(&model, &["--api-key", KEY]);
    let url = server.url.clone();
    let requests: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut response = Server::agent()
                    .post(format!("{url}/v1/chat/completions"))
                    .header("Authorization", &format!("Bearer {KEY}"))
                    .header("Content-Type", "application/json")
                    .send(
                        json!({"model": "tiny-qwen3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
                            .to_string()
                            .as_bytes(),
                    )
                    .unwrap();
                let status = response.status().as_u16();
                (status, response.body_mut().read_to_string().unwrap())
            })
        })
        .collect();
    let (status, _) = server.get("/health", None);
    assert_eq!(status, 200);
    for request in requests {
        let (status, body) = request.join().unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("chat template did not finish within"),
            "{body}"
        );
    }
    let (status, _) = server.get("/health", None);
    assert_eq!(status, 200);
    let (status, _) = server.terminate_within(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {}", server.log());
}
