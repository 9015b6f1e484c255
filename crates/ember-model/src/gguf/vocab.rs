//! A byte-level BPE tokenizer (`tokenizer.json`: GPT-2, Llama 3, Qwen3) as GGUF's
//! `tokenizer.ggml.*` metadata, which llama.cpp builds its vocabulary from: the tokens
//! by id as the tokenizer spells them (byte-level characters, `Ġ` for a space), their
//! kinds, the merges in rank order, and the name of the pre-tokenizer's regular
//! expression (llama.cpp keeps the expressions themselves, by name).

use serde_json::{Value as Json, json};

use super::file::{GgufFile, Value};

/// llama.cpp's token kinds (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Llama 3's pre-tokenizer expression (llama.cpp's `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's and Qwen3's (llama.cpp's `qwen2`): digits one at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers llama.cpp knows by name that Ember's tokenizers use: the name
/// and the `tokenizer.json` pre-tokenizer it stands for.
pub fn pre_tokenizer_json(name: &str) -> Option<Json> {
    let split = |regex: &str| {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    };
    match name {
        "gpt-2" => Some(serde_json::json!(
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        )),
        "llama-bpe" | "llama3" => Some(split(LLAMA3_REGEX)),
        "qwen2" => Some(split(QWEN2_REGEX)),
        _ => None,
    }
}

/// llama.cpp's name of a `tokenizer.json` pre-tokenizer: GPT-2's byte-level regex,
/// Llama 3's or Qwen2's split expression.
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    match pre["type"].as_str()? {
        "ByteLevel" if pre["use_regex"].as_bool() != Some(false) => Some("gpt-2"),
        "Sequence" => {
            let regex = pre["pretokenizers"]
                .as_array()?
                .iter()
                .find(|p| p["type"] == "Split")?["pattern"]["Regex"]
                .as_str()?;
            match regex {
                LLAMA3_REGEX => Some("llama-bpe"),
                QWEN2_REGEX => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The special ids and flags that go beside the vocabulary.
pub struct SpecialIds {
    /// Beginning of text.
    pub bos: Option<u32>,
    /// End of text (the first of the model's end ids).
    pub eos: Option<u32>,
    /// The model's second end id, llama.cpp's end of turn (Llama 3's `<|eot_id|>`).
    pub eot: Option<u32>,
    /// Whether encoding a text adds the beginning-of-text token (Llama 3's does).
    pub add_bos: bool,
}

/// `tokenizer.ggml.*` metadata of `tokenizer_json` (a `tokenizer.json` document) for an
/// embedding of `vocab_size` rows: ids the tokenizer does not use are `[PAD<id>]`,
/// unused, as llama.cpp's converter writes them.
pub fn vocab_metadata(
    tokenizer_json: &Json,
    vocab_size: usize,
    special: &SpecialIds,
) -> Result<Vec<(String, Value)>, String> {
    let model = &tokenizer_json["model"];
    if model["type"] != "BPE" {
        return Err(format!(
            "the tokenizer is {}, not byte-level BPE (GGUF export takes GPT-2, Llama 3 and Qwen3 tokenizers)",
            model["type"]
        ));
    }
    let pre = pre_tokenizer_name(&tokenizer_json["pre_tokenizer"]).ok_or_else(|| {
        "the tokenizer's pre-tokenizer is none llama.cpp knows (GPT-2's, Llama 3's, Qwen2's)"
            .to_string()
    })?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, kind: i32| -> Result<(), String> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            format!("token {text:?} has id {id}, past the embedding's {vocab_size} rows")
        })?;
        *slot = Some((text.to_string(), kind));
        Ok(())
    };
    for (text, id) in model["vocab"]
        .as_object()
        .ok_or("the tokenizer has no vocab")?
    {
        put(
            id.as_u64().ok_or("a vocab id is not a number")?,
            text,
            NORMAL,
        )?;
    }
    for added in tokenizer_json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let kind = if added["special"].as_bool() == Some(true) {
            CONTROL
        } else {
            USER_DEFINED
        };
        let text = added["content"]
            .as_str()
            .ok_or("an added token has no content")?;
        put(
            added["id"].as_u64().ok_or("an added token has no id")?,
            text,
            kind,
        )?;
    }
    let merges = model["merges"]
        .as_array()
        .ok_or("the tokenizer has no merges")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a merge is neither \"a b\" nor [\"a\", \"b\"]")?;
    let (texts, kinds): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| {
            let (text, kind) = token.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
            (Value::String(text), Value::I32(kind))
        })
        .unzip();
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(texts)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(kinds)),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
    ];
    if let Some(bos) = special.bos {
        out.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(eos) = special.eos {
        out.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if let Some(eot) = special.eot {
        out.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(eot)));
    }
    out.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(special.add_bos),
    ));
    Ok(out)
}

/// A `tokenizer.json` document and a `tokenizer_config.json` (special tokens' names,
/// the chat template) from a GGUF file's `tokenizer.ggml.*` metadata.
pub fn tokenizer_parts(file: &GgufFile) -> Result<(Json, Json), String> {
    let text = |key: &str| file.get(key).and_then(Value::as_str);
    match text("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(format!(
                "tokenizer.ggml.model \"{other}\": Ember reads byte-level BPE (\"gpt2\") vocabularies"
            ));
        }
        None => return Err("no tokenizer.ggml.model".into()),
    }
    let pre_name = text("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer_json(pre_name).ok_or_else(|| {
        format!("tokenizer.ggml.pre \"{pre_name}\": Ember reads gpt-2, llama-bpe and qwen2")
    })?;
    let array = |key: &str| match file.get(key) {
        Some(Value::Array(values)) => Ok(values),
        _ => Err(format!("no {key}")),
    };
    let tokens = array("tokenizer.ggml.tokens")?;
    let kinds = array("tokenizer.ggml.token_type").ok();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let token = token.as_str().ok_or("a token is not a string")?;
        let kind = kinds
            .and_then(|k| k.get(id))
            .and_then(|k| match k {
                Value::I32(v) => Some(*v),
                other => other.as_u64().map(|v| v as i32),
            })
            .unwrap_or(NORMAL);
        if kind == UNUSED {
            continue;
        }
        // Added tokens are in the model's vocabulary too: `tokenizers` gives an added
        // token missing from it the next free id, not its own.
        vocab.insert(token.to_string(), id.into());
        if matches!(kind, CONTROL | USER_DEFINED) {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind == CONTROL,
            }));
        }
    }
    let merges: Vec<Json> = array("tokenizer.ggml.merges")?
        .iter()
        .map(|m| m.as_str().map(Json::from))
        .collect::<Option<_>>()
        .ok_or("a merge is not a string")?;
    let id = |key: &str| file.get(key).and_then(Value::as_u64);
    let token_text = |id: Option<u64>| {
        id.and_then(|i| tokens.get(i as usize))
            .and_then(Value::as_str)
    };
    let bos = token_text(id("tokenizer.ggml.bos_token_id"));
    let add_bos = file.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true));
    let post_processor = match bos {
        Some(bos) if add_bos => {
            let bos_id = id("tokenizer.ggml.bos_token_id");
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            })
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            // llama.cpp's llama-bpe vocabulary takes whole words found in it as they are.
            "ignore_merges": pre_name == "llama-bpe" || pre_name == "llama3",
            "vocab": vocab, "merges": merges,
        },
    });
    let mut config = json!({});
    if let Some(bos) = bos {
        config["bos_token"] = bos.into();
    }
    if let Some(eos) = token_text(id("tokenizer.ggml.eos_token_id")) {
        config["eos_token"] = eos.into();
    }
    if let Some(template) = text("tokenizer.chat_template") {
        config["chat_template"] = template.into();
    }
    Ok((tokenizer, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-tokenizers Ember writes by name are the ones it recognizes.
    #[test]
    fn pre_tokenizer_names_round_trip() {
        for name in ["gpt-2", "llama-bpe", "qwen2"] {
            let json = pre_tokenizer_json(name).unwrap();
            assert_eq!(pre_tokenizer_name(&json), Some(name));
        }
        assert_eq!(pre_tokenizer_json("falcon"), None);
    }

    #[test]
    fn the_vocabulary_is_padded_and_typed() {
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
            "added_tokens": [{"id": 3, "content": "<|end|>", "special": true}],
            "pre_tokenizer": pre_tokenizer_json("qwen2").unwrap(),
        });
        let special = SpecialIds {
            bos: None,
            eos: Some(3),
            eot: None,
            add_bos: false,
        };
        let meta = vocab_metadata(&json, 5, &special).unwrap();
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("tokenizer.ggml.pre"),
            Some(Value::String("qwen2".into()))
        );
        let Some(Value::Array(tokens)) = get("tokenizer.ggml.tokens") else {
            panic!()
        };
        assert_eq!(tokens[4], Value::String("[PAD4]".into()));
        assert_eq!(tokens[3], Value::String("<|end|>".into()));
        let Some(Value::Array(kinds)) = get("tokenizer.ggml.token_type") else {
            panic!()
        };
        assert_eq!(kinds, [1, 1, 1, 3, 5].map(Value::I32));
        assert_eq!(
            get("tokenizer.ggml.merges"),
            Some(Value::Array(vec![Value::String("a b".into())]))
        );
        let err = vocab_metadata(&json, 3, &special).err().unwrap();
        assert!(err.contains("id 3, past the embedding's 3 rows"), "{err}");
    }
}
