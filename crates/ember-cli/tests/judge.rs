//! `ember judge` against a local server that plays Ollama (and an OpenAI-compatible
//! endpoint): scores parsed from free text, a transient 500 retried, an unparseable
//! answer counted as a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Answers by the response under judgement: "good" → 90, "fine" → "Score: 70",
/// "bad" → a 500 the first time then 10, anything else → no number.
fn serve(requests: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let failed_once = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            requests.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header == "\r\n" || header.is_empty() {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let prompt = request["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(prompt.contains("on a scale from 0 to 100"));
            let answer = if prompt.contains("response `good`") {
                "90".to_string()
            } else if prompt.contains("response `fine`") {
                "Score: 70".to_string()
            } else if prompt.contains("response `bad`") {
                if failed_once.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".as_slice());
                    continue;
                }
                "10".to_string()
            } else {
                "I cannot score this.".to_string()
            };
            let reply = if path == "/api/chat" {
                assert_eq!(request["options"]["seed"], 123);
                assert_eq!(request["options"]["num_ctx"], 2048);
                serde_json::json!({"message": {"role": "assistant", "content": answer}, "done": true})
            } else {
                serde_json::json!({"choices": [{"message": {"role": "assistant", "content": answer}}]})
            };
            let text = reply.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    format!("http://{address}")
}

fn responses(dir: &std::path::Path) -> std::path::PathBuf {
    let entries: Vec<serde_json::Value> = ["good", "fine", "bad", "weird"]
        .iter()
        .map(|r| serde_json::json!({"instruction": "Say hi.", "input": "", "output": "Hi.", "model_response": r}))
        .collect();
    let path = dir.join("responses.json");
    std::fs::write(&path, serde_json::to_string(&entries).unwrap()).unwrap();
    path
}

fn judge(url: &str, file: &std::path::Path, api: &str) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_LOG", "error")
        .args([
            "judge",
            "--responses",
            file.to_str().unwrap(),
            "--url",
            url,
            "--api",
            api,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn ollama_scores_are_averaged_with_retries_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let url = serve(requests.clone());
    let v = judge(&url, &responses(dir.path()), "ollama");
    assert_eq!(
        v,
        serde_json::json!({"count": 4, "scored": 3, "average": 170.0 / 3.0, "failures": 1})
    );
    // Four entries, one retried.
    assert_eq!(requests.load(Ordering::SeqCst), 5);
}

#[test]
fn openai_compatible_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let url = serve(Arc::new(AtomicUsize::new(0)));
    let v = judge(&url, &responses(dir.path()), "openai");
    assert_eq!(v["scored"], 3);
}

#[test]
fn entries_without_responses_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.json");
    std::fs::write(
        &path,
        r#"[{"instruction": "a", "input": "", "output": "b"}]"#,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "judge",
            "--responses",
            path.to_str().unwrap(),
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("entry 0 has no \"model_response\""));
}

mod common;

/// `ember judge` with `args` on the responses file.
fn judge_output(file: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_LOG", "error")
        .env_remove("OPENAI_API_KEY")
        .args(["judge", "--responses", file.to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn nothing_scored_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = responses(dir.path());
    // Connection refused (port 9: discard, closed on loopback), retried, then given up.
    let o = judge_output(&file, &["--url", "http://127.0.0.1:9", "--attempts", "2"]);
    common::assert_one_line_error(&o, "no response could be scored (3 tried)");
    let o = judge_output(&file, &["--url", "localhost:11434"]);
    common::assert_one_line_error(&o, "is not an http:// or https:// address");
    // A server that refuses every request.
    let url = common::serve(|_, stream| {
        common::respond(stream, "401 Unauthorized", &[], b"{\"error\": \"no key\"}")
    });
    let o = judge_output(&file, &["--url", &url]);
    common::assert_one_line_error(&o, "HTTP 401");
}

#[test]
fn later_failures_keep_the_scores_already_collected() {
    let dir = tempfile::tempdir().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let url = common::serve(move |_, stream| {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            let body = serde_json::json!({"message": {"content": "80"}}).to_string();
            common::respond(stream, "200 OK", &[], body.as_bytes());
        } else {
            common::respond(stream, "200 OK", &[], b"not json");
        }
    });
    let o = judge_output(&responses(dir.path()), &["--url", &url]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"count": 4, "scored": 1, "average": 80.0, "failures": 3})
    );
}

#[test]
fn a_hung_judge_times_out_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::serve(|_, _| std::thread::sleep(std::time::Duration::from_secs(60)));
    let started = std::time::Instant::now();
    let o = judge_output(
        &responses(dir.path()),
        &["--url", &url, "--timeout", "1", "--attempts", "1"],
    );
    common::assert_one_line_error(&o, "no response could be scored (3 tried)");
    // Three entries of one second each, not 60 s per attempt.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn the_api_key_is_sent_to_openai_compatible_judges() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::serve(|request, stream| {
        if request.header("authorization") != Some("Bearer sk-test") {
            common::respond(stream, "401 Unauthorized", &[], b"{}");
            return;
        }
        let body = serde_json::json!({"choices": [{"message": {"content": "75"}}]}).to_string();
        common::respond(stream, "200 OK", &[], body.as_bytes());
    });
    let file = responses(dir.path());
    let o = judge_output(
        &file,
        &["--url", &url, "--api", "openai", "--api-key", "sk-test"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["scored"], 4);
    // From the environment, as OpenAI's clients read it.
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_LOG", "error")
        .env("OPENAI_API_KEY", "sk-test")
        .args([
            "judge",
            "--responses",
            file.to_str().unwrap(),
            "--json",
            "--url",
            &url,
        ])
        .args(["--api", "openai"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
}
