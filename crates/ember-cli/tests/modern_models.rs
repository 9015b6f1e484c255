//! Llama 3, Qwen3 and Gemma 3 through the `ember` binary: every model command on the
//! reference models (tests/fixtures/tiny-llama3, tiny-qwen3, tiny-gemma3, tiny-gemma3-b:
//! Hub layouts, bf16 in one file and f32 in shards), both forms of `config.json`, a download from a local server laid
//! out like the Hub, and one-line errors for directories that are not models. The
//! reference values are transformers' (see crates/ember-model/tests/*_parity.rs).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const MODELS: [&str; 4] = ["tiny-llama3", "tiny-qwen3", "tiny-gemma3", "tiny-gemma3-b"];

fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}

/// transformers' outputs for the model as loaded: `as-loaded.json` where the shared
/// fixture's own differ from them (see ember-model's parity tests), else `cases.json`.
fn reference(name: &str) -> Value {
    let as_loaded = fixture(name).join("as-loaded.json");
    if as_loaded.exists() {
        json_file(&as_loaded)
    } else {
        json_file(&fixture(name).join("cases.json"))
    }
}

/// The fixture's `config.json` in the other form transformers reads (4's or 5's).
fn other_config_form(name: &str) -> Value {
    ["config-v5.json", "config-v4.json"]
        .iter()
        .map(|file| fixture(name).join(file))
        .find(|path| path.exists())
        .map(|path| json_file(&path))
        .unwrap_or_else(|| panic!("{name} has no config in the other form"))
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn run_json(args: &[&str]) -> Value {
    let o = ember().args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `ember perplexity`'s loss of `text` under `model` in `dtype`.
fn perplexity_loss(model: &str, text: &str, dtype: &str) -> f64 {
    perplexity_loss_with(model, text, &["--dtype", dtype])
}

/// `ember perplexity --json`'s loss with `extra` flags.
fn perplexity_loss_with(model: &str, text: &str, extra: &[&str]) -> f64 {
    let mut args = vec![
        "perplexity",
        "--model",
        model,
        "--text-file",
        text,
        "--json",
    ];
    args.extend_from_slice(extra);
    run_json(&args)["loss"].as_f64().unwrap()
}

/// A copy of a fixture model whose `config.json` is replaced by `config`.
fn with_config(name: &str, config: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// `generate --json` gives the reference prompt ids and greedy tokens with and without
/// the KV cache, from both forms of config.json.
#[test]
fn generate_matches_transformers_with_both_config_forms() {
    for name in MODELS {
        let other = with_config(name, &other_config_form(name));
        let cases = json_file(&fixture(name).join("cases.json"));
        let reference = reference(name);
        for (dir, cache) in [(fixture(name), true), (other.path().to_path_buf(), false)] {
            let prompt = &cases["prompts"][0];
            let mut args = vec![
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt",
                prompt["text"].as_str().unwrap(),
                "--max-new-tokens",
                "24",
                "--no-stop",
                "--json",
            ];
            if !cache {
                args.push("--no-kv-cache");
            }
            let v = run_json(&args);
            assert_eq!(v["prompt_ids"], prompt["ids"], "{name}");
            assert_eq!(
                v["generated_ids"], reference["prompts"][0]["greedy_24"],
                "{name} cache {cache}"
            );
        }
    }
}

#[test]
fn perplexity_info_and_chat_match_transformers() {
    for name in MODELS {
        let dir = fixture(name);
        let model = dir.to_str().unwrap();
        let cases = json_file(&dir.join("cases.json"));
        let reference = reference(name);
        let text = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(text.path(), cases["loss"]["text"].as_str().unwrap()).unwrap();
        let v = run_json(&[
            "perplexity",
            "--model",
            model,
            "--text-file",
            text.path().to_str().unwrap(),
            "--json",
        ]);
        let want = reference["loss"]["mean_next_token_loss"].as_f64().unwrap();
        let loss = v["loss"].as_f64().unwrap();
        assert!(
            (loss - want).abs() / want < 1e-5,
            "{name}: {loss} vs {want}"
        );
        let v = run_json(&["info", "--model", model, "--json"]);
        assert_eq!(v["params"], cases["parameters"], "{name}");
        let messages = cases["chat"]["messages"].as_array().unwrap();
        let v = run_json(&[
            "chat",
            "--model",
            model,
            "--system",
            messages[0]["content"].as_str().unwrap(),
            "--message",
            messages[1]["content"].as_str().unwrap(),
            "--max-new-tokens",
            "16",
            "--json",
        ]);
        assert_eq!(v["prompt_ids"], cases["chat"]["ids"], "{name}");
        assert_eq!(
            v["generated_ids"], reference["chat"]["greedy_16_until_eos"],
            "{name}"
        );
    }
}

#[test]
fn directories_that_are_not_usable_models_are_named() {
    let good = json_file(&fixture("tiny-llama3").join("config.json"));
    let mut unknown = good.clone();
    unknown["model_type"] = "mamba".into();
    let mut rope = good.clone();
    rope["rope_scaling"]["rope_type"] = "yarn".into();
    let mut heads = good.clone();
    heads["num_key_value_heads"] = 3.into();
    for (config, needle) in [
        (
            unknown,
            "model_type \"mamba\" is not supported (supported: gpt2, llama, qwen3, gemma3_text)",
        ),
        (
            rope,
            "rope_type \"yarn\" is not supported (supported: default, llama3, linear)",
        ),
        (
            heads,
            "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
        ),
    ] {
        let dir = with_config("tiny-llama3", &config);
        let o = ember()
            .args([
                "generate",
                "--model",
                dir.path().to_str().unwrap(),
                "--prompt",
                "hi",
            ])
            .output()
            .unwrap();
        assert_one_line_error(&o, needle);
    }
    let dir = with_config(
        "tiny-qwen3",
        &json_file(&fixture("tiny-qwen3").join("config.json")),
    );
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let o = ember()
        .args([
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
        ])
        .output()
        .unwrap();
    assert_one_line_error(&o, "tokenizer.json");
}

/// A server laid out like the Hub, serving a fixture directory (404 for what it lacks).
fn hub_of(dir: PathBuf) -> String {
    serve(move |request, stream: &mut TcpStream| {
        let file = request.path.rsplit('/').next().unwrap_or("").to_string();
        match std::fs::read(dir.join(&file)) {
            Ok(bytes) if request.path.contains("/resolve/main/") => {
                let etag = format!("\"{}\"", ember_data::files::sha256_hex(&bytes));
                respond(stream, "200 OK", &[("ETag", etag)], &bytes);
            }
            _ => respond(stream, "404 Not Found", &[], b""),
        }
    })
}

#[test]
fn a_sharded_hub_repository_downloads_and_runs() {
    let url = hub_of(fixture("tiny-qwen3"));
    let out = tempfile::tempdir().unwrap();
    let model = out.path().join("tiny-qwen3");
    let o = ember()
        .args(["download", "--repo", "test/tiny-qwen3", "--endpoint", &url])
        .args(["--out", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00008.safetensors",
        "model-00008-of-00008.safetensors",
    ] {
        assert_eq!(
            std::fs::read(model.join(file)).unwrap(),
            std::fs::read(fixture("tiny-qwen3").join(file)).unwrap(),
            "{file}"
        );
    }
    let cases = json_file(&fixture("tiny-qwen3").join("cases.json"));
    let v = run_json(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        cases["prompts"][1]["text"].as_str().unwrap(),
        "--max-new-tokens",
        "24",
        "--no-stop",
        "--json",
    ]);
    assert_eq!(v["generated_ids"], cases["prompts"][1]["greedy_24"]);
}

/// `hub_of` plus the Hub's revision API, naming `commit` as `main`.
fn hub_with_api(dir: PathBuf, commit: &'static str) -> String {
    serve(move |request, stream: &mut TcpStream| {
        if request.path.contains("/api/models/") && request.path.ends_with("/revision/main") {
            let body = format!("{{\"sha\": \"{commit}\"}}");
            return respond(stream, "200 OK", &[], body.as_bytes());
        }
        let file = request.path.rsplit('/').next().unwrap_or("").to_string();
        match std::fs::read(dir.join(&file)) {
            Ok(bytes) if request.path.contains("/resolve/main/") => {
                let etag = format!("\"{}\"", ember_data::files::sha256_hex(&bytes));
                respond(stream, "200 OK", &[("ETag", etag)], &bytes);
            }
            _ => respond(stream, "404 Not Found", &[], b""),
        }
    })
}

/// `ember download --repo` fills the Hugging Face cache as huggingface_hub lays it out,
/// `--model OWNER/NAME` reads it (offline too), downloads into it when a model is
/// missing, and refuses to when HF_HUB_OFFLINE is set.
#[test]
fn repository_ids_go_through_the_hugging_face_cache() {
    const COMMIT: &str = "1234567890abcdef1234567890abcdef12345678";
    let url = hub_with_api(fixture("tiny-qwen3"), COMMIT);
    let cache = tempfile::tempdir().unwrap();
    let with_cache = |args: &[&str], offline: bool| {
        let mut command = ember();
        command
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_ENDPOINT", &url)
            .env_remove("HF_HOME");
        if offline {
            command.env("HF_HUB_OFFLINE", "1");
        } else {
            command.env_remove("HF_HUB_OFFLINE");
        }
        command.args(args).output().unwrap()
    };
    let o = with_cache(&["download", "--repo", "test/tiny-qwen3"], false);
    assert!(o.status.success(), "{}", stderr(&o));
    let repo = cache.path().join("models--test--tiny-qwen3");
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        snapshot.to_str().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    assert!(snapshot.join("model-00008-of-00008.safetensors").is_file());

    let cases = json_file(&fixture("tiny-qwen3").join("cases.json"));
    let generate = |repo: &str, offline: bool| {
        with_cache(
            &[
                "generate",
                "--model",
                repo,
                "--prompt",
                cases["prompts"][1]["text"].as_str().unwrap(),
                "--max-new-tokens",
                "24",
                "--no-stop",
                "--json",
            ],
            offline,
        )
    };
    let o = generate("test/tiny-qwen3", true);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["generated_ids"], cases["prompts"][1]["greedy_24"]);

    // Not in the cache: offline refuses, online downloads.
    assert_one_line_error(&generate("test/other-model", true), "HF_HUB_OFFLINE");
    let o = generate("test/other-model", false);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        cache
            .path()
            .join("models--test--other-model/snapshots")
            .join(COMMIT)
            .join("config.json")
            .is_file()
    );

    // A cache laid out by huggingface_hub: snapshot files are links into blobs/.
    let by_hand = cache.path().join("models--hand--made");
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let snapshot = by_hand.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(by_hand.join("blobs")).unwrap();
    std::fs::create_dir_all(by_hand.join("refs")).unwrap();
    std::fs::write(by_hand.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-qwen3")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let blob = ember_data::files::sha256_hex(&bytes);
        std::fs::write(by_hand.join("blobs").join(&blob), &bytes).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            PathBuf::from("../../blobs").join(&blob),
            snapshot.join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let o = generate("hand/made", true);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["generated_ids"], cases["prompts"][1]["greedy_24"]);
}

/// Every model flag takes a Hub repository id: `info --model OWNER/NAME` describes the
/// cached snapshot. And a relative path that reads as `OWNER/NAME` but exists here, even
/// as a symbolic link loop, is a path: its error is the loader's, one line, and no
/// request reaches the Hub.
#[test]
fn model_flags_take_repository_ids_but_never_for_a_path_that_exists() {
    const COMMIT: &str = "abcdef1234567890abcdef1234567890abcdef12";
    let url = hub_with_api(fixture("tiny-qwen3"), COMMIT);
    let cache = tempfile::tempdir().unwrap();
    let o = ember()
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_ENDPOINT", &url)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .args(["download", "--repo", "test/tiny-qwen3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ember()
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .args(["info", "--model", "test/tiny-qwen3", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let cases = json_file(&fixture("tiny-qwen3").join("cases.json"));
    assert_eq!(v["params"], cases["parameters"]);

    #[cfg(unix)]
    {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        // `owner/name` here is a link to itself; a Hub that counts what it is asked.
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let hub = serve(move |_request, stream: &mut TcpStream| {
            seen.fetch_add(1, Ordering::SeqCst);
            respond(stream, "404 Not Found", &[], b"");
        });
        let here = tempfile::tempdir().unwrap();
        std::fs::create_dir(here.path().join("owner")).unwrap();
        std::os::unix::fs::symlink("name", here.path().join("owner/name")).unwrap();
        let empty_cache = tempfile::tempdir().unwrap();
        for args in [
            &["info", "--model", "owner/name", "--json"][..],
            &["generate", "--model", "owner/name", "--prompt", "hi"][..],
        ] {
            let o = ember()
                .current_dir(here.path())
                .env("HF_HUB_CACHE", empty_cache.path())
                .env("HF_ENDPOINT", &hub)
                .env_remove("HF_HOME")
                .env_remove("HF_HUB_OFFLINE")
                .args(args)
                .output()
                .unwrap();
            assert_one_line_error(&o, "owner/name");
            let err = stderr(&o);
            for hub_word in ["download", "HF_HUB_OFFLINE", "Hugging Face cache", &hub] {
                assert!(!err.contains(hub_word), "{args:?}: {err}");
            }
        }
        assert_eq!(requests.load(Ordering::SeqCst), 0);
    }
}

/// `ember bench --mode load` reads any architecture and says what it loaded; modes are
/// a closed set that the parser names.
#[test]
fn bench_loads_a_gemma3_model() {
    let dir = fixture("tiny-gemma3");
    let v = run_json(&["bench", "--mode", "load", "--model", dir.to_str().unwrap()]);
    assert_eq!(v["mode"], "load");
    assert_eq!(v["model_type"], "gemma3_text");
    let cases = json_file(&dir.join("cases.json"));
    assert_eq!(v["params"], cases["parameters"]);
    let o = ember().args(["bench", "--mode", "bogus"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[possible values: train, generate, load]"));
}

/// `bench --sequences N` decodes N sequences together and counts the new tokens of all
/// of them: N x new tokens over the whole time, N x (new tokens - 1) over the packed
/// decoding steps (each prompt's first new token comes from reading it).
#[test]
fn bench_counts_the_tokens_of_sequences_generated_together() {
    let v = run_json(&[
        "bench",
        "--mode",
        "generate",
        "--preset",
        "tiny",
        "--prompt-len",
        "5",
        "--new-tokens",
        "4",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--sequences",
        "3",
    ]);
    assert_eq!(v["sequences"], 3);
    let kv = &v["kv_cache"];
    let rate = |tokens: f64, seconds: &str| tokens / kv[seconds].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    assert!(close(
        kv["new_tokens_per_s"].as_f64().unwrap(),
        rate(12.0, "s_median")
    ));
    assert!(close(
        kv["decode_tokens_per_s"].as_f64().unwrap(),
        rate(9.0, "decode_s_median")
    ));
    assert!(kv["decode_s_median"].as_f64().unwrap() < kv["s_median"].as_f64().unwrap());
}

/// `--dtype q8_0`, `q4_0` and `q4_k` quantize every model's matrices at load: the
/// text's loss moves, a little in q8_0 (under 0.2%) and more in q4_0 (under 2%); q4_k
/// holds rows that are not whole super-blocks of 256 in q8_0, which for these narrow
/// models is every row: q8_0's loss exactly. A format Ember does not have is named.
#[test]
fn quantized_dtypes_change_the_loss_a_little() {
    let text = tempfile::NamedTempFile::new().unwrap();
    for name in MODELS {
        let dir = fixture(name);
        let cases = json_file(&dir.join("cases.json"));
        std::fs::write(text.path(), cases["loss"]["text"].as_str().unwrap()).unwrap();
        let loss = |dtype: &str| {
            perplexity_loss(dir.to_str().unwrap(), text.path().to_str().unwrap(), dtype)
        };
        let f32_loss = loss("f32");
        for (dtype, bound) in [("q8_0", 0.002), ("q4_0", 0.02)] {
            let change = (loss(dtype) - f32_loss).abs() / f32_loss;
            assert!(change > 0.0 && change < bound, "{name} {dtype}: {change}");
        }
        assert_eq!(loss("q4_k"), loss("q8_0"), "{name}");
    }
    let o = ember()
        .args([
            "perplexity",
            "--model",
            fixture(MODELS[0]).to_str().unwrap(),
        ])
        .args([
            "--text-file",
            text.path().to_str().unwrap(),
            "--dtype",
            "q5_1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown dtype \"q5_1\" (f32, bf16, f16, q8_0, q4_0, q4_k)"),
        "{}",
        stderr(&o)
    );
}

/// `--precision bf16` with bf16 weights rounds the activations to bf16 before the
/// products: the text's loss moves a little (under 1%) from the f32 products' on the
/// same bf16 weights; a precision products do not compute in is a one-line error.
#[test]
fn bf16_precision_moves_the_loss_a_little() {
    let text = tempfile::NamedTempFile::new().unwrap();
    let dir = fixture(MODELS[0]);
    let cases = json_file(&dir.join("cases.json"));
    std::fs::write(text.path(), cases["loss"]["text"].as_str().unwrap()).unwrap();
    let (model, text) = (dir.to_str().unwrap(), text.path().to_str().unwrap());
    let loss = |precision| {
        perplexity_loss_with(model, text, &["--dtype", "bf16", "--precision", precision])
    };
    let f32_products = loss("f32");
    let change = (loss("bf16") - f32_products).abs() / f32_products;
    assert!(change > 0.0 && change < 0.01, "{change}");
    let o = ember()
        .args(["perplexity", "--model", model, "--text-file", text])
        .args(["--dtype", "bf16", "--precision", "q4_0"])
        .output()
        .unwrap();
    assert_one_line_error(&o, "--precision q4_0: products compute in f32 or bf16");
}

/// `ember export --gguf` writes the file and says what it wrote; a directory given as
/// the file, or a model it cannot export, is a one-line error and writes nothing.
#[test]
fn export_writes_a_gguf_file_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qwen3.gguf");
    let model = fixture("tiny-qwen3");
    let summary = run_json(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--gguf",
        out.to_str().unwrap(),
        "--dtype",
        "q8_0",
        "--json",
    ]);
    assert_eq!(summary["architecture"], "qwen3");
    assert_eq!(summary["tensors"]["Q8_0"], 15);
    assert_eq!(summary["tensors"]["F32"], 9);
    let bytes = std::fs::metadata(&out).unwrap().len();
    assert_eq!(summary["bytes"], bytes);
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    for (args, message) in [
        (
            vec![
                "--model",
                model.to_str().unwrap(),
                "--gguf",
                dir.path().to_str().unwrap(),
            ],
            "is a directory; name the file to write",
        ),
        (
            vec![
                "--model",
                fixture("tiny-gemma3").to_str().unwrap(),
                "--gguf",
                dir.path().join("g.gguf").to_str().unwrap(),
            ],
            "GGUF export takes GPT-2, Llama and Qwen3 models; this is gemma3",
        ),
    ] {
        let o = ember().arg("export").args(&args).output().unwrap();
        assert!(!o.status.success());
        assert!(stderr(&o).contains(message), "{}", stderr(&o));
    }
    assert!(!dir.path().join("g.gguf").exists());
}

/// `--model FILE.gguf`: an exported model runs from its GGUF file as from its
/// directory (the same loss as the directory in the file's dtype, the same chat ids),
/// and `info` describes it.
#[test]
fn a_gguf_file_runs_as_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("llama3.gguf");
    let model = fixture("tiny-llama3");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "Every effort moves you, and then some more text.").unwrap();
    let (model, gguf_path, text) = (
        model.to_str().unwrap(),
        gguf.to_str().unwrap(),
        text.to_str().unwrap(),
    );
    run_json(&[
        "export", "--model", model, "--gguf", gguf_path, "--dtype", "q4_0", "--json",
    ]);
    let loss = |m: &str, dtype: &str| perplexity_loss(m, text, dtype);
    // The file's Q4_0 matrices as they are, whatever --dtype says.
    assert_eq!(loss(gguf_path, "f32"), loss(model, "q4_0"));
    let chat = |m: &str| {
        let r = run_json(&[
            "chat",
            "--model",
            m,
            "--dtype",
            "q4_0",
            "--message",
            "Hi",
            "--max-new-tokens",
            "6",
            "--json",
        ]);
        (r["prompt_ids"].clone(), r["generated_ids"].clone())
    };
    assert_eq!(chat(gguf_path), chat(model));
    let info = run_json(&["info", "--model", gguf_path, "--json"]);
    assert_eq!(info["model_type"], "llama");
}
