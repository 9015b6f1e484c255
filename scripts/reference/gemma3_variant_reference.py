#!/usr/bin/env python3
"""A second tiny Gemma 3 (text) fixture, `tests/fixtures/tiny-gemma3-b/`, for the Gemma 3 features the
shared `tiny-gemma3` does not exercise; and a copy of the shared `tiny-gemma3` with a transformers-4 config.

The shared fixture (`$EMBER_SHARED/fixtures/make_gemma3_fixtures.py`) is Gemma 3 270M in miniature: tied
head, one KV head, `query_pre_attn_scalar == head_dim`, no softcapping, unscaled RoPE, bf16, one file, its
layers [sliding, sliding, full]. The variant made here, with random weights drawn the same way (seed 47):

* 5 layers [sliding, sliding, full, sliding, sliding] (`sliding_window_pattern` 3: a full layer after every
  two sliding ones, and sliding layers after the last full one), window 5, prompts up to 50 tokens, so a
  sliding-window query sees only its last 5 positions (itself included) and the window moves ~10 times;
* `query_pre_attn_scalar` 24 with head_dim 16 (attention scale 24**-0.5, not head_dim**-0.5);
* GQA with 2 KV heads for 4 query heads;
* an untied output head (`lm_head.weight` of its own);
* `final_logit_softcapping` 5.0 (logits = 5 * tanh(logits / 5));
* RoPE: sliding layers theta 10,000 unscaled, full-attention layers theta 1,000,000 with *linear* scaling
  factor 8 (position / 8), as Gemma 3 4B/12B/27B ship it;
* float32 storage, sharded (`max_shard_size="40KB"`, so `model.safetensors.index.json` maps the tensors).

Files written in `tests/fixtures/tiny-gemma3-b/` (Hub layout, plus the references):
  config.json (as transformers 5 writes it: `layer_types`, `rope_parameters`),
  config-v4.json (the same model as the Hub's transformers-4 Gemma 3 configs spell it: `rope_theta`,
  `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`, `torch_dtype`),
  generation_config.json, model-0000k-of-0000n.safetensors + model.safetensors.index.json,
  tokenizer.json, tokenizer_config.json (Gemma chat template), cases.json, expected.safetensors
  (`logits_{i}` float32 [seq, vocab] for prompt i).
The reference is `AutoModelForCausalLM.from_pretrained(dir, dtype=float32, attn_implementation="eager")`;
greedy generations use an all-ones attention mask and pad id 0 (`<pad>`, not `<bos>` = 2).
Checks (asserted, and recorded in cases.json -> "checks"): greedy with the KV cache (whose sliding layers
keep only the last window-1 keys) equals greedy without it and a hand-written argmax loop over full forward
passes; config-v4.json loads to the same layer types, RoPE parameters and bit-identical logits.
cases.json -> "feature_effects" records how far the logits move when one feature is switched off on the
same weights (softcapping, linear scaling, query_pre_attn_scalar, sliding window), showing each matters.

Also copies `$EMBER_SHARED/fixtures/tiny-gemma3` into `tests/fixtures/tiny-gemma3/` (files unchanged) and
writes its config-v4.json (rope_scaling null, sliding_window_pattern 3, torch_dtype bfloat16), checked to
load to bit-identical logits.

Deterministic (fixed seed, CPU, one thread): two runs write byte-identical files.
Run from the repository root:  python scripts/reference/gemma3_variant_reference.py [FIXTURES_DIR]
(default tests/fixtures). Reads `$EMBER_SHARED` (default /work/shared): `fixtures/make_modern_fixtures.py`
(train_tokenizer, PROMPTS, MESSAGES), `fixtures/make_gemma3_fixtures.py` (the GEMMA chat template),
`fixtures/tiny-gemma3/`, `datasets/the-verdict.txt`.
"""
import json
import os
import shutil
import stat
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = os.environ.get("EMBER_SHARED", "/work/shared")
sys.path.insert(0, os.path.join(SHARED, "fixtures"))  # before this script's own dir (it has an older copy)

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast  # noqa: E402

from make_gemma3_fixtures import GEMMA  # noqa: E402
from make_modern_fixtures import MESSAGES, PROMPTS, train_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

S, F = "sliding_attention", "full_attention"
SEED = 47
WINDOW = 5
LAYER_TYPES = [S, S, F, S, S]
ROPE_V5 = {S: {"rope_type": "default", "rope_theta": 10000.0},
           F: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}
SOFTCAP = 5.0
# The third prompt: the-verdict's first 50 tokens (checked below to be its beginning; 10 windows long,
# and short enough to keep the fixture under 1 MB).
LONG_PROMPT = ("I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was "
               "no great surprise")


def v4_config(v5: dict, *, rope_scaling, pattern: int) -> dict:
    """The transformers-4 spelling of a Gemma 3 text config (as the Hub's Gemma 3 repositories have it)."""
    cfg = dict(v5)
    rope = cfg.pop("rope_parameters")
    for k in ("layer_types", "_sliding_window_pattern", "dtype"):
        cfg.pop(k, None)
    cfg["rope_theta"] = rope[F]["rope_theta"]
    cfg["rope_local_base_freq"] = rope[S]["rope_theta"]
    cfg["rope_scaling"] = rope_scaling
    cfg["sliding_window_pattern"] = pattern
    cfg["torch_dtype"] = v5["dtype"]
    cfg["transformers_version"] = "4.51.0"
    return cfg


def load(d: str):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()


def check_v4_loads_same(d: str, v4: dict, prompts_ids: list) -> dict:
    """Load `d` with `v4` as its config.json (in a temporary copy); compare with `d` as it is."""
    ref = load(d)
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(d):
            if f not in ("config.json", "config-v4.json"):
                shutil.copyfile(os.path.join(d, f), os.path.join(tmp, f))
        json.dump(v4, open(os.path.join(tmp, "config.json"), "w"), indent=2, sort_keys=True)
        alt = load(tmp)
    same_types = alt.config.layer_types == ref.config.layer_types
    same_rope = alt.config.rope_parameters == ref.config.rope_parameters
    max_diff = 0.0
    with torch.no_grad():
        for ids in prompts_ids:
            x = torch.tensor([ids])
            max_diff = max(max_diff, float((alt(x).logits - ref(x).logits).abs().max()))
    assert same_types, (alt.config.layer_types, ref.config.layer_types)
    assert same_rope, (alt.config.rope_parameters, ref.config.rope_parameters)
    assert max_diff == 0.0, max_diff
    return {"config_v4_layer_types_equal": same_types, "config_v4_rope_parameters_equal": same_rope,
            "config_v4_logits_max_abs_diff": max_diff}


def greedy_by_hand(model, ids: list, n: int):
    """n argmax steps, each a full forward pass over the whole sequence (no cache); and the smallest
    top-1 / top-2 logit gap met on the way."""
    seq, margin = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(n):
            last = model(torch.tensor([seq])).logits[0, -1]
            top = torch.topk(last, 2).values
            margin = min(margin, float(top[0] - top[1]))
            seq.append(int(last.argmax()))
    return seq[len(ids):], margin


def make_variant(out: str, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(SEED)
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    tok = train_tokenizer(text, 600, specials, "<bos>")
    tok.save(os.path.join(out, "tokenizer.json"))
    pad_id, bos_id = tok.token_to_id("<pad>"), tok.token_to_id("<bos>")
    eos_id, eot_id = tok.token_to_id("<eos>"), tok.token_to_id("<end_of_turn>")
    assert pad_id != bos_id
    cfg = Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=WINDOW, layer_types=list(LAYER_TYPES), max_position_embeddings=2048, rms_norm_eps=1e-6,
        tie_word_embeddings=False, final_logit_softcapping=SOFTCAP, rope_parameters=json.loads(json.dumps(ROPE_V5)),
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=[eos_id, eot_id],
        hidden_activation="gelu_pytorch_tanh", attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(cfg)
    # Weights drawn as make_gemma3_fixtures.py draws them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.1 * torch.randn_like(p))  # Gemma's norms scale by (1 + w)
            elif "o_proj" in name or "down_proj" in name:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.08)
    model = model.to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": GEMMA, "bos_token": "<bos>",
               "eos_token": "<eos>", "pad_token": "<pad>", "add_bos_token": True, "model_max_length": 2048},
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    v5 = json.load(open(os.path.join(out, "config.json")))
    v4 = v4_config(v5, rope_scaling={"rope_type": "linear", "factor": 8.0}, pattern=3)
    json.dump(v4, open(os.path.join(out, "config-v4.json"), "w"), indent=2, sort_keys=True)

    ref = load(out)
    assert ref.config.layer_types == LAYER_TYPES and ref.config.rope_parameters == ROPE_V5
    assert "lm_head.weight" in json.load(open(os.path.join(out, "model.safetensors.index.json")))["weight_map"]
    assert not torch.equal(ref.lm_head.weight, ref.model.embed_tokens.weight)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert text.startswith(LONG_PROMPT)
    prompts = list(PROMPTS) + [LONG_PROMPT]
    tensors, checks, margins = {}, {}, []
    cases = {"family": "gemma3", "prompts": [],
             "reference": "transformers from_pretrained float32 eager, all-ones attention mask",
             "tolerances": {"logits_max_abs": 1e-4, "greedy_ids": "exact", "prompt_ids": "exact"}}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = tok.encode(prompt).ids
            x = torch.tensor([ids])
            tensors[f"logits_{i}"] = ref(x).logits[0].contiguous()
            kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                      eos_token_id=None, pad_token_id=pad_id)
            gen = ref.generate(x, use_cache=True, **kw)[0, len(ids):].tolist()
            gen_nc = ref.generate(x, use_cache=False, **kw)[0, len(ids):].tolist()
            by_hand, margin = greedy_by_hand(ref, ids, 24)
            assert len(gen) == 24 and gen == gen_nc == by_hand, (i, gen, gen_nc, by_hand)
            margins.append(margin)
            cases["prompts"].append({"text": prompt, "ids": ids, "greedy_24": gen})
        checks["greedy_24_cache_equals_no_cache"] = True
        checks["greedy_24_equals_full_forward_argmax_loop"] = True
        checks["greedy_24_min_top1_top2_logit_gap"] = round(min(margins), 6)
        chat_text = fast.apply_chat_template(MESSAGES, chat_template=GEMMA, tokenize=False, add_generation_prompt=True)
        chat_ids = tok.encode(chat_text, add_special_tokens=False).ids
        x = torch.tensor([chat_ids])
        kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                  eos_token_id=[eos_id, eot_id], pad_token_id=pad_id)
        chat_gen = ref.generate(x, use_cache=True, **kw)[0, len(chat_ids):].tolist()
        assert chat_gen == ref.generate(x, use_cache=False, **kw)[0, len(chat_ids):].tolist()
        cases["chat"] = {"messages": MESSAGES, "add_generation_prompt": True, "text": chat_text, "ids": chat_ids,
                         "greedy_16_until_eos": chat_gen}
        ids = tok.encode(PROMPTS[1]).ids
        x = torch.tensor([ids])
        cases["loss"] = {"text": PROMPTS[1], "mean_next_token_loss": float(ref(x, labels=x).loss)}
    cases["parameters"] = sum(p.numel() for p in ref.parameters())

    # Each feature switched off on the same weights: how far the logits (all prompts) move.
    def without(**change):
        c = json.loads(json.dumps(v5))
        c.update(change)
        with tempfile.TemporaryDirectory() as tmp:
            for f in os.listdir(out):
                if (f.endswith(".safetensors") and f != "expected.safetensors") or f.endswith(".index.json"):
                    shutil.copyfile(os.path.join(out, f), os.path.join(tmp, f))
            json.dump(c, open(os.path.join(tmp, "config.json"), "w"))
            alt = load(tmp)
        diff, greedy_changed = 0.0, False
        with torch.no_grad():
            for i, p in enumerate(cases["prompts"]):
                x = torch.tensor([p["ids"]])
                diff = max(diff, float((alt(x).logits[0] - tensors[f"logits_{i}"]).abs().max()))
                g = alt.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, min_new_tokens=24,
                                 do_sample=False, eos_token_id=None, pad_token_id=pad_id)[0, len(p["ids"]):].tolist()
                greedy_changed |= g != p["greedy_24"]
            x = torch.tensor([cases["prompts"][1]["ids"]])
            loss = float(alt(x, labels=x).loss)
        return {"logits_max_abs_diff": round(diff, 6), "greedy_24_changes": greedy_changed,
                "loss_abs_diff": round(abs(loss - cases["loss"]["mean_next_token_loss"]), 6)}

    no_scaling = json.loads(json.dumps(ROPE_V5))
    no_scaling[F] = {"rope_type": "default", "rope_theta": 1000000.0}
    effects = {
        "final_logit_softcapping_off": without(final_logit_softcapping=None),
        "full_attention_linear_rope_scaling_off": without(rope_parameters=no_scaling),
        "query_pre_attn_scalar_16_instead_of_24": without(query_pre_attn_scalar=16),
        "sliding_window_4096_instead_of_5": without(sliding_window=4096),
    }
    with torch.no_grad():
        ref.config.final_logit_softcapping = None
        raw_max = max(float(ref(torch.tensor([p["ids"]])).logits.abs().max()) for p in cases["prompts"])
        ref.config.final_logit_softcapping = SOFTCAP
    effects["final_logit_softcapping_off"]["raw_logits_max_abs"] = round(raw_max, 6)
    for k, v in effects.items():
        assert v["logits_max_abs_diff"] > 1e-2, (k, v)
    checks.update(check_v4_loads_same(out, v4, [p["ids"] for p in cases["prompts"]]))
    cases["checks"] = checks
    cases["feature_effects"] = effects
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    json.dump(cases, open(os.path.join(out, "cases.json"), "w"), indent=1)
    for f in os.listdir(out):  # save_pretrained and save_file leave their files owner-only
        os.chmod(os.path.join(out, f), stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    print(out, "params", cases["parameters"], "prompt lengths", [len(p["ids"]) for p in cases["prompts"]])
    print(json.dumps({"checks": checks, "feature_effects": effects}, indent=1))


def copy_shared(out: str) -> None:
    """The shared tiny-gemma3, file by file (writable), plus its config-v4.json."""
    src = os.path.join(SHARED, "fixtures", "tiny-gemma3")
    os.makedirs(out, exist_ok=True)
    for f in sorted(os.listdir(src)):
        dst = os.path.join(out, f)
        if os.path.exists(dst):
            os.chmod(dst, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        shutil.copyfile(os.path.join(src, f), dst)
        os.chmod(dst, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    v5 = json.load(open(os.path.join(out, "config.json")))
    assert v5["layer_types"] == [S, S, F]
    assert all(r["rope_type"] == "default" for r in v5["rope_parameters"].values())
    v4 = v4_config(v5, rope_scaling=None, pattern=3)
    json.dump(v4, open(os.path.join(out, "config-v4.json"), "w"), indent=2, sort_keys=True)
    cases = json.load(open(os.path.join(out, "cases.json")))
    print(out, check_v4_loads_same(out, v4, [p["ids"] for p in cases["prompts"]]))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    text = open(os.path.join(SHARED, "datasets", "the-verdict.txt"), encoding="utf-8").read()
    make_variant(os.path.join(root, "tiny-gemma3-b"), text)
    copy_shared(os.path.join(root, "tiny-gemma3"))


if __name__ == "__main__":
    main()
