#!/usr/bin/env python3
"""PyTorch reference fixture for one LoRA training step on the tiny Qwen3 (tests/fixtures/tiny-qwen3-lora/).

LoRA as in the book's appendix E (rasbt/LLMs-from-scratch appendix-E/01_main-chapter-code: `LoRALayer`,
`LinearWithLoRA`: x @ A @ B scaled by alpha / r, added to the frozen Linear), implemented here by hand (no peft) on
every q/k/v/o/gate/up/down projection of transformers' Qwen3ForCausalLM:

    y = F.linear(x, Wt) + scale * (x @ A) @ B,   Wt = W^T [out, in] (nn.Linear), A [in, r], B [r, out],
    scale = alpha / r,  r = 4, alpha = 8  (so scale = 2).

In Ember's orientation (W [in, out], y = x W) this is y = x W + scale (x A) B, and the merged weight is
W + scale A B (torch: Wt + scale (A B)^T).

Run (from the repository root, venv as in tests/fixtures/tiny-qwen3-lora/README.md):
    python scripts/reference/qwen3_lora_reference.py
"""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests/fixtures/tiny-qwen3-lora"
SHARED = Path(os.environ.get("EMBER_SHARED", "/work/shared"))
MODEL_DIR = SHARED / "fixtures/tiny-qwen3"

RANK, ALPHA = 4, 8
SCALE = ALPHA / RANK
SEQ_LEN = 12
SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "I had always thought Jack Gisburn rather a cheap genius"]
LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.1
TARGETS = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
           ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]

checks = []


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    if msg not in checks:
        checks.append(msg)


class LoRALinear(torch.nn.Module):
    """Frozen nn.Linear (no bias in Qwen3's projections) plus scale * (x @ A) @ B."""

    def __init__(self, base, A, B, scale):
        super().__init__()
        assert base.bias is None
        self.base, self.scale = base, scale
        self.lora_a = torch.nn.Parameter(A)  # [in, r]
        self.lora_b = torch.nn.Parameter(B)  # [r, out]

    def forward(self, x):
        return F.linear(x, self.base.weight) + self.scale * ((x @ self.lora_a) @ self.lora_b)


def load_base(dtype=torch.float32):
    m = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=dtype, attn_implementation="eager")
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def init_adapters(model):
    """torch.manual_seed(0); for layer i = 0.., for module in TARGETS order: A ~ N(0, std 1/r) [in, r], then
    B ~ N(0, std 0.01) [r, out], drawn with Tensor.normal_ from the global generator (float32)."""
    torch.manual_seed(0)
    out = {}
    for i in range(model.config.num_hidden_layers):
        for sub, name in TARGETS:
            lin = getattr(getattr(model.model.layers[i], sub), name)
            n_out, n_in = lin.weight.shape
            A = torch.empty(n_in, RANK).normal_(0.0, 1.0 / RANK)
            B = torch.empty(RANK, n_out).normal_(0.0, 0.01)
            out[f"model.layers.{i}.{sub}.{name}"] = (A, B)
    return out


def attach(model, adapters):
    params = []
    for key, (A, B) in adapters.items():
        _, _, i, sub, name = key.split(".")
        parent = getattr(model.model.layers[int(i)], sub)
        mod = LoRALinear(getattr(parent, name), A.clone().to(model.dtype), B.clone().to(model.dtype), SCALE)
        setattr(parent, name, mod)
        params += [mod.lora_a, mod.lora_b]
    return params


def merge(model, adapters):
    """W + scale * A @ B in Ember's [in, out] orientation == Wt + scale * (A @ B)^T on the nn.Linear weight."""
    with torch.no_grad():
        for key, (A, B) in adapters.items():
            _, _, i, sub, name = key.split(".")
            lin = getattr(getattr(model.model.layers[int(i)], sub), name)
            lin.weight += SCALE * (A.to(lin.weight.dtype) @ B.to(lin.weight.dtype)).T
    return model


def lm_loss(logits, targets):
    """Mean cross-entropy over the targets != -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def run(dtype, adapters, inputs, targets):
    model = load_base(dtype)
    params = attach(model, adapters)
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    opt.zero_grad()
    logits_before = model(inputs).logits
    loss_before = lm_loss(logits_before, targets)
    loss_before.backward()
    grads = {}
    names = list(adapters)
    for k, name in enumerate(names):
        grads[f"{name}.lora_a"] = params[2 * k].grad.detach().clone()
        grads[f"{name}.lora_b"] = params[2 * k + 1].grad.detach().clone()
    gnorm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values()))
    opt.step()
    with torch.no_grad():
        logits_after = model(inputs).logits
        loss_after = lm_loss(logits_after, targets)
    updated = {n: (params[2 * k].detach().clone(), params[2 * k + 1].detach().clone()) for k, n in enumerate(names)}
    return dict(model=model, logits_before=logits_before.detach(), loss_before=float(loss_before.detach()),
                grads=grads, grad_norm=gnorm, logits_after=logits_after, loss_after=float(loss_after),
                updated=updated)


def main():
    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    enc = [tok.encode(s).ids for s in SENTENCES]
    check(all(len(e) >= SEQ_LEN + 1 for e in enc), "each sentence has >= 13 tokens")
    rows = [e[:SEQ_LEN + 1] for e in enc]
    inputs = torch.tensor([r[:SEQ_LEN] for r in rows])
    targets = torch.tensor([r[1:SEQ_LEN + 1] for r in rows])
    targets[1, -1] = -100
    n_counted = int((targets != -100).sum())
    check(n_counted == 23, "23 counted targets")

    base = load_base()
    check(base.lm_head.weight is base.model.embed_tokens.weight, "tied head (frozen anyway)")
    with torch.no_grad():
        logits_base = base(inputs).logits
        loss_base = float(lm_loss(logits_base, targets))
        # the base model as loaded here reproduces the shared fixture's logits for its prompt 0
        from safetensors.torch import load_file
        cases = json.loads((MODEL_DIR / "cases.json").read_text())
        exp = load_file(str(MODEL_DIR / "expected.safetensors"))["logits_0"]
        got = base(torch.tensor([cases["prompts"][0]["ids"]])).logits[0]
        check(float((got - exp).abs().max()) < 1e-5, "base model reproduces tiny-qwen3/expected.safetensors logits_0 (1e-5)")
    adapters = init_adapters(base)

    r32 = run(torch.float32, adapters, inputs, targets)
    r64 = run(torch.float64, adapters, inputs, targets)

    # independent check of the loss: manual log-softmax / gather / mean over counted targets
    lp = torch.log_softmax(r32["logits_before"].double(), -1)
    t = targets.clone()
    keep = t != -100
    t[~keep] = 0
    manual = float(-(lp.gather(-1, t.unsqueeze(-1)).squeeze(-1)[keep]).mean())
    check(abs(manual - r32["loss_before"]) / r32["loss_before"] < 1e-6, "CE loss == manual log-softmax mean")
    check(float((r32["logits_before"] - logits_base).abs().max()) > 1e-3, "adapters change the logits (B != 0)")

    # merged models: initial adapters and updated adapters
    with torch.no_grad():
        merged0 = merge(load_base(), adapters)(inputs).logits
        merged1 = merge(load_base(), r32["updated"])(inputs).logits
    d_merge0 = float((merged0[0] - r32["logits_before"][0]).abs().max())
    d_merge1 = float((merged1[0] - r32["logits_after"][0]).abs().max())
    check(d_merge0 < 1e-4 and d_merge1 < 1e-4, "merged logits == unmerged adapted logits (row 0) to 1e-4")

    last = base.config.num_hidden_layers - 1
    tensors = {"input_ids": inputs, "targets": targets,
               "logits_row0_base_no_adapters": logits_base[0],
               "logits_before": r32["logits_before"],
               "logits_row0_before": r32["logits_before"][0],
               "logits_after": r32["logits_after"],
               "logits_row0_merged_initial": merged0[0],
               "logits_row0_after": r32["logits_after"][0],
               "logits_row0_merged_after": merged1[0]}
    for name, (A, B) in adapters.items():
        tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"] = A, B
    for name, (A, B) in r32["updated"].items():
        tensors[f"after_step.{name}.lora_a"], tensors[f"after_step.{name}.lora_b"] = A, B
    for name, g in r32["grads"].items():
        tensors[f"grad.{name}"] = g
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT_DIR / "tensors.safetensors"))
    os.chmod(OUT_DIR / "tensors.safetensors", 0o644)

    def maxdiff(a, b):
        return float((a.double() - b.double()).abs().max())

    ref = {
        "description": "One AdamW step of hand-written LoRA adapters on tiny-qwen3; see README.md",
        "model": "shared fixtures/tiny-qwen3 (Qwen3ForCausalLM, f32, 2 layers, hidden 64, vocab 600, tied head)",
        "lora": {"rank": RANK, "alpha": ALPHA, "scale": SCALE,
                 "targets": [f"{s}.{n}" for s, n in TARGETS], "layers": list(range(last + 1)),
                 "formula": "y = x @ W + scale * (x @ A) @ B, W [in, out] (= nn.Linear weight transposed), "
                            "A [in, r], B [r, out]; merged W' = W + scale * A @ B",
                 "init": "torch.manual_seed(0); for layer in 0..L-1, for module in targets order: "
                         "A = empty(in, r).normal_(0, 1/r) then B = empty(r, out).normal_(0, 0.01) "
                         "(std, not variance); float32",
                 "shapes": {f"{s}.{n}": {"A": list(adapters[f'model.layers.0.{s}.{n}'][0].shape),
                                         "B": list(adapters[f'model.layers.0.{s}.{n}'][1].shape)} for s, n in TARGETS},
                 "num_adapter_params": sum(A.numel() + B.numel() for A, B in adapters.values())},
        "batch": {"sentences": SENTENCES, "sentence_ids": enc, "rows_13_ids": rows,
                  "input_ids": inputs.tolist(), "targets": targets.tolist(),
                  "note": "row r = first 13 ids of sentence r (tokenizer.json, no special tokens added); "
                          "inputs = ids[0:12], targets = ids[1:13], targets[1][11] = -100",
                  "num_counted_targets": n_counted},
        "loss": "mean cross-entropy over targets != -100 (F.cross_entropy(ignore_index=-100), 23 terms)",
        "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD,
                      "params": "only the 28 LoRA tensors (A and B of 7 modules x 2 layers), in layer-major, "
                                "targets order, A before B; base weights frozen (requires_grad=False)",
                      "steps": 1},
        "loss_base_no_adapters": loss_base,
        "loss_before": r32["loss_before"],
        "adapter_grad_global_l2_norm": r32["grad_norm"],
        "adapter_grad_l2_norms": {k: float(v.double().norm()) for k, v in r32["grads"].items()},
        "loss_after": r32["loss_after"],
        "merge_check": {"max_abs_diff_row0_merged_vs_unmerged_initial_adapters": d_merge0,
                        "max_abs_diff_row0_merged_vs_unmerged_updated_adapters": d_merge1},
        "fp64_agreement": {
            "loss_before_abs_diff": abs(r32["loss_before"] - r64["loss_before"]),
            "loss_after_abs_diff": abs(r32["loss_after"] - r64["loss_after"]),
            "grad_norm_rel_diff": abs(r32["grad_norm"] - r64["grad_norm"]) / r64["grad_norm"],
            "logits_before_max_abs_diff": maxdiff(r32["logits_before"], r64["logits_before"]),
            "logits_after_max_abs_diff": maxdiff(r32["logits_after"], r64["logits_after"]),
            "updated_adapters_max_abs_diff": max(max(maxdiff(a, c), maxdiff(b, d)) for (a, b), (c, d) in
                                                 zip(r32["updated"].values(), r64["updated"].values())),
            "note": "the same run with the model and adapters in float64 (not stored)"},
        "key_updated_tensors": [f"after_step.model.layers.0.self_attn.q_proj.lora_a",
                                f"after_step.model.layers.0.self_attn.q_proj.lora_b",
                                f"after_step.model.layers.{last}.mlp.down_proj.lora_a",
                                f"after_step.model.layers.{last}.mlp.down_proj.lora_b"],
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "threads": torch.get_num_threads(), "device": "cpu", "attn_implementation": "eager"},
        "checks": checks,
        "command": "python scripts/reference/qwen3_lora_reference.py",
    }
    (OUT_DIR / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps({k: ref[k] for k in ("loss_base_no_adapters", "loss_before", "adapter_grad_global_l2_norm",
                                          "loss_after", "merge_check", "fp64_agreement")}, indent=1))
    for c in checks:
        print("ok:", c)


if __name__ == "__main__":
    main()
