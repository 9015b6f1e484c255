//! `logprobs` through the HTTP API, against the model itself: the log softmax of the
//! logits each token was chosen from, the alternatives in order, the chat and the
//! completions shapes, whole and streamed alike.

use burn::prelude::*;
use ember_model::CausalLm;

use super::*;

/// Greedy continuation of `prompt` by the fixture model, step by step: each token with
/// its log probability and the log probabilities of the `top` most likely tokens.
fn by_hand(prompt: &[u32], steps: usize, top: usize) -> Vec<(u32, f32, Vec<f32>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
    let device = Device::ndarray();
    let model = ember_model::load_model(&dir, None, &device).unwrap().model;
    let mut cache = model.new_cache();
    let mut feed = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let data: Vec<i64> = feed.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(data, [1, feed.len()]), &device);
        let logits = model.next_token_logits(ids, &mut cache).unwrap();
        let row: Vec<f32> = logits.into_data().to_vec().unwrap();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let norm = max as f64
            + row
                .iter()
                .map(|&x| ((x - max) as f64).exp())
                .sum::<f64>()
                .ln();
        let mut ranked: Vec<usize> = (0..row.len()).collect();
        ranked.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let id = ranked[0];
        let logprob = |i: usize| (row[i] as f64 - norm) as f32;
        out.push((
            id as u32,
            logprob(id),
            ranked[..top].iter().map(|&i| logprob(i)).collect(),
        ));
        feed = vec![id as u32];
    }
    out
}

fn close(got: &Value, want: f32) {
    let got = got.as_f64().unwrap() as f32;
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_give_the_model_s_log_probabilities() {
    let server = server(ServerOptions::default());
    let router = server.router();
    let prompt = "Every effort moves you";
    let prompt_ids = ember_model::model_tokenizer(
        &ember_model::load_model(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3"),
            None,
            &Device::ndarray(),
        )
        .unwrap(),
    )
    .unwrap()
    .encode(prompt)
    .unwrap();
    let want = by_hand(&prompt_ids, 6, 3);
    let body = completion(json!({"prompt": prompt, "max_tokens": 6, "logprobs": 3, "stop": []}));
    let (status, _, answer) = send(&router, post("/v1/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let logprobs = &answer["choices"][0]["logprobs"];
    let tokens = logprobs["tokens"].as_array().unwrap();
    // All six, unless the model ended the text (its end token is not listed).
    let finish = &answer["choices"][0]["finish_reason"];
    assert!(tokens.len() == 6 || finish == "stop", "{answer}");
    for (i, (_, logprob, top)) in want.iter().take(tokens.len()).enumerate() {
        close(&logprobs["token_logprobs"][i], *logprob);
        let alternatives = logprobs["top_logprobs"][i].as_object().unwrap();
        let mut values: Vec<f32> = alternatives
            .values()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        values.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(values.len(), 3);
        for (got, want) in values.iter().zip(top) {
            assert!((got - want).abs() < 1e-4, "position {i}: {got} vs {want}");
        }
        // Greedy: the chosen token is the most likely.
        close(&alternatives[tokens[i].as_str().unwrap()], top[0]);
    }
    // The offsets count the characters of the text before each token.
    let text = answer["choices"][0]["text"].as_str().unwrap();
    let offsets: Vec<u64> = logprobs["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1])
            && *offsets.last().unwrap() as usize <= text.chars().count()
    );

    // Streamed: the same entries, spread over the chunks.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, _, events) = send(&router, post("/v1/completions", &streamed)).await;
    let raw = events["raw"].as_str().unwrap();
    let mut got = Vec::new();
    for line in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(line).unwrap();
        if let Some(lp) = chunk["choices"][0]["logprobs"].as_object() {
            got.extend(lp["token_logprobs"].as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(&got, logprobs["token_logprobs"].as_array().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_give_log_probabilities_only_when_asked() {
    let server = server(ServerOptions::default());
    let router = server.router();
    let ask = |extra: Value| {
        let mut body = chat(json!({"max_tokens": 5, "stop": []}));
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (_, _, plain) = send(&router, post("/v1/chat/completions", &ask(json!({})))).await;
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
    let (status, _, answer) = send(
        &router,
        post(
            "/v1/chat/completions",
            &ask(json!({"logprobs": true, "top_logprobs": 2})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        text, plain["choices"][0]["message"]["content"],
        "the same reply"
    );
    // The tokens' bytes make up the text (the stop token, if any, is not listed).
    let bytes: Vec<u8> = content
        .iter()
        .flat_map(|e| {
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), text);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy picks the most likely"
        );
        assert_eq!(top[0]["logprob"], entry["logprob"]);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
    }
    // logprobs: true alone gives no alternatives.
    let (_, _, answer) = send(
        &router,
        post("/v1/chat/completions", &ask(json!({"logprobs": true}))),
    )
    .await;
    let first = &answer["choices"][0]["logprobs"]["content"][0];
    assert_eq!(first["top_logprobs"], json!([]));
    assert_eq!(first["logprob"], content[0]["logprob"]);
}
