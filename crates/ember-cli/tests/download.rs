//! `ember download` against a local HTTP server that plays the Hugging Face Hub: a
//! redirect carrying `X-Linked-Etag` (the SHA-256), `Range` support, a connection that
//! drops half-way, and a corrupted file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

struct Hub {
    config: Vec<u8>,
    weights: Vec<u8>,
    /// The first this-many weight responses stop after half the bytes.
    drops: AtomicUsize,
    /// Serve wrong bytes for the weights.
    corrupt: bool,
    /// Requests for the weights that asked for a range.
    ranged: AtomicUsize,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve(hub: Arc<Hub>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Bounded: a test needs a handful of requests.
        for stream in listener.incoming().take(32) {
            let Ok(stream) = stream else { continue };
            handle(&hub, stream);
        }
    });
    format!("http://{address}")
}

fn handle(hub: &Hub, mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().unwrap();
        }
    }
    let file = path.rsplit('/').next().unwrap_or("");
    if !["config.json", "model.safetensors"].contains(&file) {
        // Like the Hub for a file the repository does not have.
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let body: &[u8] = if file == "config.json" {
        &hub.config
    } else {
        &hub.weights
    };
    if path.contains("/resolve/") && file == "model.safetensors" {
        // Large files redirect to a CDN; the checksum travels on the redirect.
        let response = format!(
            "HTTP/1.1 302 Found\r\nLocation: /cdn/model.safetensors\r\nX-Linked-Etag: \"{}\"\r\nX-Linked-Size: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            sha256(body),
            body.len()
        );
        stream.write_all(response.as_bytes()).unwrap();
        return;
    }
    let mut served = body.to_vec();
    if hub.corrupt && file == "model.safetensors" {
        served[10] ^= 0xff;
    }
    let status = if range_start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    if file == "model.safetensors" && range_start > 0 {
        hub.ranged.fetch_add(1, Ordering::SeqCst);
    }
    let rest = &served[range_start..];
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        rest.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let drop_now = file == "model.safetensors"
        && hub
            .drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok();
    if drop_now {
        let _ = stream.write_all(&rest[..rest.len() / 2]);
        return; // Connection closed early.
    }
    let _ = stream.write_all(rest);
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-gpt2-a")
            .join(name),
    )
    .unwrap()
}

fn download(endpoint: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_LOG", "error")
        .args([
            "download",
            "--repo",
            "test/tiny",
            "--endpoint",
            endpoint,
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

#[test]
fn downloads_resume_after_a_dropped_connection_and_verify_the_checksum() {
    let hub = Arc::new(Hub {
        config: fixture("config.json"),
        weights: fixture("model.safetensors"),
        drops: AtomicUsize::new(1),
        corrupt: false,
        ranged: AtomicUsize::new(0),
    });
    let endpoint = serve(hub.clone());
    let out = tempfile::tempdir().unwrap();
    let o = download(&endpoint, out.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out.path().join("model.safetensors")).unwrap(),
        hub.weights
    );
    assert_eq!(
        std::fs::read(out.path().join("config.json")).unwrap(),
        hub.config
    );
    assert!(!out.path().join("model.safetensors.part").exists());
    // The second request continued where the first stopped.
    assert_eq!(hub.ranged.load(Ordering::SeqCst), 1);
    // And the directory loads as a model.
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_LOG", "error")
        .args(["info", "--model", out.path().to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"], 3_320_640);
}

#[test]
fn a_corrupted_download_is_rejected_and_removed() {
    let hub = Arc::new(Hub {
        config: fixture("config.json"),
        weights: fixture("model.safetensors"),
        drops: AtomicUsize::new(0),
        corrupt: true,
        ranged: AtomicUsize::new(0),
    });
    let endpoint = serve(hub);
    let out = tempfile::tempdir().unwrap();
    let o = download(&endpoint, out.path());
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checksum mismatch") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!out.path().join("model.safetensors").exists());
    assert!(!out.path().join("model.safetensors.part").exists());
}

#[test]
fn unknown_sizes_are_named() {
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["download", "--size", "gpt3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown GPT-2 size \"gpt3\""));
}
