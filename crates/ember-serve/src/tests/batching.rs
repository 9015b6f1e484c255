//! Continuous batching through the HTTP API (issue 26): concurrent requests get exactly
//! what each gets alone, the KV cache budget bounds what runs and is the context when
//! it is the smaller, sequences that outgrow it are preempted and still finish, and a
//! prompt that begins like an earlier one starts from its cached keys and values.

use futures_util::future::join_all;

use super::*;
use crate::BatchLimits;

/// The text, finish reason, completion and prompt tokens of a completion.
async fn complete(router: &Router, body: Value) -> (String, String, u64, u64) {
    let (status, _, answer) = send(router, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let choice = &answer["choices"][0];
    (
        choice["text"].as_str().unwrap().to_string(),
        choice["finish_reason"].as_str().unwrap().to_string(),
        answer["usage"]["completion_tokens"].as_u64().unwrap(),
        answer["usage"]["prompt_tokens"].as_u64().unwrap(),
    )
}

fn batching(max_batch: usize, kv_cache_bytes: Option<usize>, prefill_chunk: usize) -> Server {
    server(ServerOptions {
        batch: BatchLimits {
            max_batch,
            kv_cache_bytes,
            prefill_chunk,
            prefix_cache: true,
        },
        ..ServerOptions::default()
    })
}

/// Two chats with the same system prompt, one after the other: the second reads the
/// system prompt's whole chunks from the prefix cache (`usage.prompt_tokens_details`,
/// `/metrics`), and both replies are those of a server without prefix caching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_system_prompt_is_read_once_and_changes_no_reply() {
    let body = |question: &str| {
        chat(json!({
            "messages": [
                {"role": "system", "content": "You are a careful assistant who answers every question about the weather, the sea and the mountains in plain words."},
                {"role": "user", "content": question}
            ],
            "max_tokens": 12
        }))
    };
    let ask = |router: Router, question: &'static str| async move {
        let (status, _, answer) =
            send(&router, post("/v1/chat/completions", &body(question))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        (
            answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            answer["usage"]["prompt_tokens"].as_u64().unwrap(),
            answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    let without = server(ServerOptions {
        batch: BatchLimits {
            prefill_chunk: 4,
            prefix_cache: false,
            ..BatchLimits::default()
        },
        ..ServerOptions::default()
    });
    let with = batching(4, None, 4);
    let mut replies = Vec::new();
    for server in [&without, &with] {
        let router = server.router();
        let first = ask(router.clone(), "Why is the sky blue?").await;
        let second = ask(router.clone(), "Is the sea cold?").await;
        replies.push((first, second));
    }
    let [(plain_first, plain_second), (first, second)] = replies.try_into().unwrap();
    assert_eq!((plain_first.2, plain_second.2, first.2), (0, 0, 0));
    assert_eq!(
        (first.0.as_str(), second.0.as_str()),
        (plain_first.0.as_str(), plain_second.0.as_str())
    );
    // The system prompt is more than 20 tokens; whole chunks of 4, the last token
    // always read.
    let cached = second.2;
    assert!(
        cached >= 20 && cached % 4 == 0 && cached < second.1,
        "{second:?}"
    );
    let (_, _, metrics) = send(&with.router(), get("/metrics")).await;
    let samples = parse_metrics(metrics["raw"].as_str().unwrap());
    assert_eq!(sample(&samples, "ember_prefix_cache_hits_total", &[]), 1.0);
    assert_eq!(
        sample(&samples, "ember_prefix_cached_tokens_total", &[]),
        cached as f64
    );
}

/// Prompts of different lengths (several longer than a chunk of 4 tokens), greedy and
/// seeded sampling.
fn requests() -> Vec<Value> {
    let prompts = [
        "Hi",
        "Every effort moves you",
        "The quick brown fox jumps over the lazy dog",
        "One, two, three, four, five, six, seven",
        "Ember",
        "Why is the sky blue? Because",
    ];
    let mut bodies: Vec<Value> = prompts
        .iter()
        .map(|p| completion(json!({"prompt": p, "max_tokens": 24})))
        .collect();
    for (seed, prompt) in [(7, "Once upon a time"), (8, "Hi")] {
        bodies.push(completion(json!({
            "prompt": prompt, "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": seed
        })));
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_exactly_what_each_gets_alone() {
    let server = batching(8, None, 4);
    let router = server.router();
    let mut alone = Vec::new();
    for body in requests() {
        alone.push(complete(&router, body).await);
    }
    let together = join_all(requests().into_iter().map(|body| complete(&router, body))).await;
    for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(got, want, "request {i}: batched differs from alone");
    }
    // That they shared forward passes is checked deterministically in batch.rs.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_budget_is_the_context_when_it_is_smaller() {
    let probe = batching(1, None, 256);
    let per_position = probe.engine().kv_budget().bytes_per_position;
    let server = batching(4, Some(20 * per_position), 256);
    assert_eq!(server.engine().kv_budget().positions(), 20);
    assert_eq!(server.context_length(), 20);
    let router = server.router();
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let answer = send(
        &router,
        post("/v1/completions", &completion(json!({"prompt": long}))),
    )
    .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, Some("prompt"));
    assert_eq!(answer.2["error"]["code"], "context_length_exceeded");
    let message = answer.2["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("KV cache budget holds 20 tokens"),
        "{message}"
    );
    // A short prompt asking for more than the rest of the 20 positions is refused up
    // front, naming the field it asked with; nothing was generated for it.
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = completion(json!({ field: 100 }));
        if field != "max_tokens" {
            body.as_object_mut().unwrap().remove("max_tokens");
        }
        let answer = send(&router, post("/v1/completions", &body)).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, Some(field));
        assert_eq!(answer.2["error"]["code"], "context_length_exceeded");
        let message = answer.2["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{field} is 100")) && message.contains("20 tokens in all"),
            "{message}"
        );
    }
    let (status, _, metrics) = send(&router, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let generated = metrics["raw"]
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("ember_generated_tokens_total"))
        .map(str::to_string);
    assert_eq!(generated.as_deref(), Some("ember_generated_tokens_total 0"));
    // Without max_tokens (completions' default: 16), the reply takes at most what is
    // left of the 20 positions.
    let mut body = completion(json!({"prompt": "one two three"}));
    body.as_object_mut().unwrap().remove("max_tokens");
    let (status, _, reply) = send(&router, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let usage = &reply["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let total = prompt + usage["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 4, "{reply}");
    assert!(total <= 20, "{reply}");
    if reply["choices"][0]["finish_reason"] == "length" {
        assert_eq!(total, 20, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_that_outgrow_the_budget_are_preempted_and_still_finish() {
    let probe = batching(1, None, 256);
    let per_position = probe.engine().kv_budget().bytes_per_position;
    // Each request alone needs 30 positions and its prompt's (at most 48, or it would
    // be refused): any two together outgrow 48.
    let server = batching(4, Some(48 * per_position), 4);
    let router = server.router();
    let body = |prompt: &str| completion(json!({"prompt": prompt, "max_tokens": 30}));
    let prompts = [
        "Every effort moves you",
        "The quick brown fox",
        "One, two, three",
        "Why is the sky",
    ];
    let answers = join_all(prompts.iter().map(|p| complete(&router, body(p)))).await;
    for (prompt, (text, finish, tokens, prompt_tokens)) in prompts.iter().zip(&answers) {
        // Each fits alone (a prompt and max_tokens over 48 would be refused).
        assert!(
            prompt_tokens + 30 <= 48,
            "{prompt}: {prompt_tokens} prompt tokens"
        );
        let most = 30;
        assert!(
            (finish == "length" && *tokens == most) || (finish == "stop" && *tokens <= most),
            "{prompt}: {finish} after {tokens} tokens: {text:?}"
        );
    }
    let (_, _, metrics) = send(&router, get("/metrics")).await;
    let samples = parse_metrics(metrics["raw"].as_str().unwrap());
    // Whether they overlapped depends on timing; that sequences are preempted and
    // finish is checked deterministically in batch.rs.
    assert_eq!(
        sample(&samples, "ember_kv_cache_budget_bytes", &[]),
        (48 * per_position) as f64
    );
    assert_eq!(sample(&samples, "ember_running_sequences", &[]), 0.0);
    assert_eq!(sample(&samples, "ember_kv_cache_bytes", &[]), 0.0);
}

/// An engine holds one of rayon's workers only while it has work: with more servers
/// in one process than the pool has workers, all idle, each still answers (when an
/// engine's loop kept its worker for good, the one past the pool's size never started
/// and its requests waited forever; the suite once hung so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_servers_than_rayon_workers_all_answer() {
    let servers: Vec<Server> = (0..rayon::current_num_threads() + 2)
        .map(|_| server(ServerOptions::default()))
        .collect();
    // Every engine has started and gone idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, server) in servers.iter().enumerate().rev() {
        let answer = tokio::time::timeout(
            Duration::from_secs(120),
            send(
                &server.router(),
                post("/v1/completions", &completion(json!({}))),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("server {i} of {} did not answer", servers.len()));
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
        assert_eq!(answer.2["usage"]["completion_tokens"], 1, "{}", answer.2);
    }
}
