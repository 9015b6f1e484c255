//! What the command-line tests share: the `ember` binary, small runs, and a local HTTP
//! server whose answers each test writes by hand.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test, logging warnings only.
pub fn ember() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.env("EMBER_LOG", "warn");
    cmd
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failure: exit code `code` and exactly one line on stderr, containing `needle`.
pub fn assert_one_line_error_code(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "more than one line: {err}"
    );
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}

/// [`assert_one_line_error_code`] with the usual exit code 2.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert_one_line_error_code(o, 2, needle);
}

/// `ember pretrain` on the-verdict with a model small enough for a step in
/// milliseconds, into `out`, plus `extra` arguments.
pub fn small_pretrain(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = ember();
    cmd.args(small_pretrain_args(out, extra));
    cmd
}

/// The arguments of [`small_pretrain`] (later `--set`s in `extra` win).
pub fn small_pretrain_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "pretrain",
        "--preset",
        "tiny",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--data",
        workspace()
            .join("datasets/the-verdict.txt")
            .to_str()
            .unwrap(),
    ]
    .map(String::from)
    .to_vec();
    for setting in [
        "model.context_length=16",
        "model.emb_dim=16",
        "model.n_heads=2",
        "model.n_layers=1",
        "train.batch_size=4",
        "train.eval_freq=50",
        "train.eval_iter=1",
        "train.sample_tokens=2",
    ] {
        args.extend(["--set".to_string(), setting.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Waits (up to a minute) until `ready` holds.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP request as the fake servers see it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let mut request = Request {
        method: parts.next()?.to_string(),
        path: parts.next()?.to_string(),
        ..Default::default()
    };
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            request
                .headers
                .push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).ok()?;
    Some(request)
}

/// Serves every connection on a thread of its own: `handle` reads the request and
/// writes whatever it likes to the stream. Returns `http://127.0.0.1:PORT`.
pub fn serve<F>(handle: F) -> String
where
    F: Fn(Request, &mut TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || {
                if let Some(request) = read_request(&stream) {
                    handle(request, &mut stream);
                }
            });
        }
    });
    format!("http://{address}")
}

/// Writes a whole response with `Content-Length` and closes.
pub fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}
