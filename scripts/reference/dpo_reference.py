#!/usr/bin/env python3
"""PyTorch reference fixture for DPO (tests/fixtures/dpo/).

Mirrors the book's ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb (rasbt/LLMs-from-scratch):
  * `format_input`            (section 2.1; Alpaca prompt style of chapter 7)
  * the 85/10/5 split         (section 2.2)
  * `PreferenceDataset`       (section 2.3; prompt / chosen / rejected tokenisation)
  * `custom_collate_fn`       (section 2.3; common padded length, prompt mask with the +2 offset, truncation)
  * `compute_logprobs`        (section 4; MEAN over the selected response tokens)
  * `compute_dpo_loss`        (section 4; -logsigmoid(beta * logits), rewards without beta)
  * `compute_dpo_loss_batch`  (section 4) and the training step of `train_model_dpo_simple` (section 5)
This file re-implements those formulas; it does not import or copy the notebook.

Model: the tiny random GPT-2 tests/fixtures/tiny-gpt2-a (HF GPT2LMHeadModel, tied head, 64 positions) is used as
both the initial policy and the frozen reference. Because it has 64 positions, allowed_max_length = 64 (the
notebook passes the model's context length, 1024, for GPT-2 medium).

Run (from the repository root, with the venv of tests/fixtures/dpo/README.md):
    python scripts/reference/dpo_reference.py
"""
import hashlib
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
torch.manual_seed(0)  # nothing random is drawn; set anyway

import tiktoken  # noqa: E402
import tiktoken.load  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import safetensors  # noqa: E402
from tiktoken_ext.openai_public import r50k_pat_str  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "tests/fixtures/tiny-gpt2-a"
OUT_DIR = ROOT / "tests/fixtures/dpo"
SHARED = Path(os.environ.get("EMBER_SHARED", "/work/shared"))
DATA_PATH = SHARED / "datasets/instruction-data-with-preference.json"
TOK_DIR = SHARED / "fixtures/gpt2-tokenizer"

PAD_ID = 50256
ALLOWED_MAX_LENGTH = 64  # tiny-gpt2-a has n_positions = 64 (notebook: 1024 = GPT-2's context length)
BETA = 0.1
NUM_EXAMPLES = 4
LR = 1e-3  # notebook: 5e-6; 1e-3 so that two steps visibly change a tiny random model
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01  # as in the notebook
NUM_STEPS = 2

checks = []


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    if msg not in checks:
        checks.append(msg)


# ---------------------------------------------------------------- tokenizer (tiktoken "gpt2", built offline)
def gpt2_tiktoken():
    """tiktoken's gpt2 encoding built from the local copies of encoder.json / vocab.bpe (no network)."""
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(TOK_DIR / "merges.txt"),
        encoder_json_file=str(TOK_DIR / "vocab.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    return tiktoken.Encoding(name="gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


# ---------------------------------------------------------------- notebook section 2: data
def format_input(entry):
    """Alpaca prompt (chapter 7 / notebook `format_input`): no trailing newline, input block only if non-empty."""
    text = ("Below is an instruction that describes a task. Write a response that appropriately completes "
            f"the request.\n\n### Instruction:\n{entry['instruction']}")
    if entry["input"]:
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def split_sizes(n):
    """Notebook section 2.2: train = int(0.85 n), test = int(0.1 n), val = rest; order train, test, val."""
    train = int(n * 0.85)
    test = int(n * 0.1)
    val = n - train - test
    return train, test, val


def encode_entry(entry, tok):
    """Notebook `PreferenceDataset`: the prompt alone, and prompt + "\\n\\n### Response:\\n" + response."""
    prompt = format_input(entry)
    return {
        "prompt": tok.encode(prompt),
        "chosen": tok.encode(f"{prompt}\n\n### Response:\n{entry['chosen']}"),
        "rejected": tok.encode(f"{prompt}\n\n### Response:\n{entry['rejected']}"),
    }


def collate(items, pad_token_id=PAD_ID, allowed_max_length=None, mask_prompt_tokens=True):
    """Notebook `custom_collate_fn`.

    * one common length for chosen AND rejected: max over both keys of (len + 1), so every row gets >= 1 pad
    * mask = True on real tokens, False on padding (all pads, including the first one)
    * prompt mask: positions [0, len(prompt) + 2) are False (the +2 covers the two "\\n" tokens (198, 198) that
      precede "### Response:"), so "### Response:\\n<response>" stays True
    * truncation to allowed_max_length happens AFTER padding and masking (ids and masks both sliced [:, :max])
    """
    common = max(len(it[k]) + 1 for it in items for k in ("chosen", "rejected"))
    out = {}
    for key in ("chosen", "rejected"):
        rows, masks = [], []
        for it in items:
            seq = it[key]
            padded = seq + [pad_token_id] * (common - len(seq))
            mask = [True] * len(padded)
            for j in range(len(seq), len(padded)):
                mask[j] = False
            if mask_prompt_tokens:
                for j in range(min(len(it["prompt"]) + 2, len(padded))):
                    mask[j] = False
            rows.append(padded)
            masks.append(mask)
        ids = torch.tensor(rows, dtype=torch.long)
        m = torch.tensor(masks, dtype=torch.bool)
        if allowed_max_length is not None:
            ids, m = ids[:, :allowed_max_length], m[:, :allowed_max_length]
        out[key], out[f"{key}_mask"] = ids, m
    return out


# ---------------------------------------------------------------- notebook section 4: loss
def token_logprobs(logits, ids):
    """log softmax(logits[:, t]) at label ids[:, t+1]: shape [B, T-1] (the notebook's `selected_log_probs`)."""
    lp = F.log_softmax(logits[:, :-1, :], dim=-1)
    return torch.gather(lp, -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def compute_logprobs(logits, ids, mask, reduction="mean"):
    """Notebook `compute_logprobs` (reduction="mean"): sum(selected * mask[:, 1:]) / sum(mask[:, 1:]).
    reduction="sum" is the variant without the division (standard DPO sequence log-likelihood)."""
    sel = token_logprobs(logits, ids)
    m = mask[:, 1:].to(sel.dtype)
    s = (sel * m).sum(-1)
    return s / m.sum(-1) if reduction == "mean" else s


def compute_dpo_loss(pc, pr, rc, rr, beta=BETA):
    """Notebook `compute_dpo_loss`: logits = (pc - pr) - (rc - rr); loss = mean(-logsigmoid(beta * logits)).
    Rewards as the notebook tracks them: policy - reference log-prob, NOT multiplied by beta."""
    logits = (pc - pr) - (rc - rr)
    losses = -F.logsigmoid(beta * logits)
    return losses.mean(), losses, (pc - rc).detach(), (pr - rr).detach()


def forward_logprobs(model, batch, reduction):
    lc = model(batch["chosen"]).logits
    lr = model(batch["rejected"]).logits
    return (compute_logprobs(lc, batch["chosen"], batch["chosen_mask"], reduction),
            compute_logprobs(lr, batch["rejected"], batch["rejected_mask"], reduction), lc, lr)


def f(x):
    return [float(v) for v in x.detach().double().flatten().tolist()] if x.dim() else float(x.item())


def stage_record(policy, reference, batch, reduction):
    """All numbers for one (weights, reduction) pair; no gradients."""
    with torch.no_grad():
        pc, pr, _, _ = forward_logprobs(policy, batch, reduction)
        rc, rr, _, _ = forward_logprobs(reference, batch, reduction)
        loss, losses, cr, rj = compute_dpo_loss(pc, pr, rc, rr)
    return {
        "policy_chosen_logprobs": f(pc), "policy_rejected_logprobs": f(pr),
        "reference_chosen_logprobs": f(rc), "reference_rejected_logprobs": f(rr),
        "dpo_logits": f((pc - pr) - (rc - rr)),
        "per_example_losses": f(losses),
        "loss": f(loss),
        "chosen_rewards": f(cr), "rejected_rewards": f(rj),
        "mean_chosen_reward": f(cr.mean()), "mean_rejected_reward": f(rj.mean()),
        "mean_reward_margin": f(cr.mean() - rj.mean()),
        "accuracy": float((cr > rj).float().mean().item()),
        "mean_chosen_reward_beta_scaled": f(BETA * cr.mean()),
        "mean_rejected_reward_beta_scaled": f(BETA * rj.mean()),
    }


def grad_norm_f64(params):
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))


def load_model(untied=False, dtype=torch.float32):
    m = GPT2LMHeadModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager", dtype=dtype)
    check(m.config.resid_pdrop == 0 and m.config.embd_pdrop == 0 and m.config.attn_pdrop == 0, "dropout is 0")
    if untied:
        # Book semantics (GPTModel loaded from a checkpoint): out_head starts equal to tok_emb but is its own
        # parameter, so it gets its own gradient and AdamW update.
        m.lm_head.weight = torch.nn.Parameter(m.transformer.wte.weight.detach().clone())
        m.config.tie_word_embeddings = False
        check(m.lm_head.weight is not m.transformer.wte.weight, "untied variant: lm_head is a separate parameter")
    else:
        check(m.lm_head.weight is m.transformer.wte.weight, "tied variant: lm_head is wte")
    return m


def run_training(policy, reference, batch, tag):
    """Notebook `train_model_dpo_simple` on one batch: zero_grad, DPO loss (mean log-probs), backward, step."""
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    params = list(policy.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    stages = {"step0": {"mean": stage_record(policy, reference, batch, "mean"),
                        "sum": stage_record(policy, reference, batch, "sum")}}
    train_losses, gnorms, snaps = [], [], {}
    for step in range(1, NUM_STEPS + 1):
        policy.train()
        opt.zero_grad()
        pc, pr, _, _ = forward_logprobs(policy, batch, "mean")
        with torch.no_grad():
            rc, rr, _, _ = forward_logprobs(reference, batch, "mean")
        loss, _, _, _ = compute_dpo_loss(pc, pr, rc, rr)
        loss.backward()
        train_losses.append(float(loss.item()))
        gnorms.append(grad_norm_f64(params))
        if step == 1:
            snaps["grad1"] = {k: p.grad.detach().clone() for k, p in policy.named_parameters()}
        opt.step()
        policy.eval()
        stages[f"after_step{step}"] = {"mean": stage_record(policy, reference, batch, "mean"),
                                       "sum": stage_record(policy, reference, batch, "sum")}
        snaps[step] = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    return stages, train_losses, gnorms, snaps


def main():
    data = json.loads(DATA_PATH.read_text(encoding="utf-8"))
    n = len(data)
    tr, te, va = split_sizes(n)
    check((n, tr, te, va) == (1100, 935, 110, 55), "split 1100 -> train 935 / test 110 / val 55 (notebook)")

    tok = gpt2_tiktoken()
    hf_tok = tokenizers.Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    entries = data[:NUM_EXAMPLES]
    items = [encode_entry(e, tok) for e in entries]
    for e, it in zip(entries, items):
        p = format_input(e)
        for key, text in (("prompt", p), ("chosen", f"{p}\n\n### Response:\n{e['chosen']}"),
                          ("rejected", f"{p}\n\n### Response:\n{e['rejected']}")):
            if hf_tok.encode(text).ids != it[key]:
                raise AssertionError(f"tiktoken and tokenizer.json disagree on {key}")
        check(it["chosen"][:len(it["prompt"])] == it["prompt"] and
              it["chosen"][len(it["prompt"]):len(it["prompt"]) + 2] == [198, 198],
              "chosen ids start with the prompt ids followed by two '\\n' tokens (198, 198)")
        check(it["rejected"][:len(it["prompt"]) + 2] == it["prompt"] + [198, 198],
              "rejected ids start with the prompt ids followed by 198, 198")
    checks.append("tiktoken gpt2 ids == gpt2-tokenizer/tokenizer.json ids for all 12 texts")

    # Cross-check against what the notebook printed for data[:2] (cells 43-57, allowed_max_length=1024).
    nb = collate(items[:2], allowed_max_length=1024)
    check(nb["chosen"].shape == (2, 81), "notebook check: data[:2] collate has 81 columns")
    check(nb["chosen"][0, :10].tolist() == [21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 19430],
          "notebook check: first chosen ids")
    check(nb["chosen"][0, 70:81].tolist() == [318, 366, 6726, 1911] + [50256] * 7,
          "notebook check: end of chosen row 0 (response then 7 pads)")
    check(nb["chosen_mask"][0].nonzero().flatten().tolist() == list(range(50, 74)),
          "notebook check: chosen_mask[0] True exactly at 50..73")
    check(len(items[1]["prompt"]) == 45 and len(items[1]["chosen"]) == 59,
          "notebook check: prompt 1 has 45 ids, chosen 1 has 59 ids")

    full = collate(items, allowed_max_length=None)
    batch = collate(items, allowed_max_length=ALLOWED_MAX_LENGTH)
    L = batch["chosen"].shape[1]
    check(L == ALLOWED_MAX_LENGTH, f"batch is truncated to {ALLOWED_MAX_LENGTH}")
    check(bool((batch["chosen_mask"].sum(1) >= 2).all() and (batch["rejected_mask"].sum(1) >= 2).all()),
          "every row keeps >= 1 counted label after truncation")

    policy, reference = load_model(), load_model()
    stages, train_losses, gnorms, snaps = run_training(policy, reference, batch, "tied")
    check(abs(stages["step0"]["mean"]["loss"] - math.log(2)) < 1e-6, "step0 loss == ln 2 (policy == reference)")

    u_policy, u_reference = load_model(untied=True), load_model()
    u_stages, u_train_losses, u_gnorms, u_snaps = run_training(u_policy, u_reference, batch, "untied")
    check(u_stages["step0"]["mean"]["loss"] == stages["step0"]["mean"]["loss"], "untied step0 == tied step0")

    # Independent precision check: the same tied run in float64 (not stored; only the agreement is recorded).
    torch.set_default_dtype(torch.float64)
    d_policy, d_reference = load_model(dtype=torch.float64), load_model(dtype=torch.float64)
    d_stages, _, _, d_snaps = run_training(d_policy, d_reference, batch, "tied-fp64")
    torch.set_default_dtype(torch.float32)
    agreement = {"fp32_vs_fp64_loss_abs_diff": {
        s: abs(stages[s]["mean"]["loss"] - d_stages[s]["mean"]["loss"]) for s in stages},
        "fp32_vs_fp64_policy_logprob_max_abs_diff": {
        s: max(abs(a - b) for k in ("policy_chosen_logprobs", "policy_rejected_logprobs")
               for a, b in zip(stages[s]["mean"][k], d_stages[s]["mean"][k])) for s in stages},
        "fp32_vs_fp64_updated_tensor_max_abs_diff": {
        f"after_step{st}.{n}": float((snaps[st][n].double() - d_snaps[st][n]).abs().max())
        for st in (1, 2) for n in ("transformer.h.0.attn.c_attn.weight", "transformer.ln_f.weight",
                                   "transformer.wte.weight")}}
    row_idx_ = torch.tensor(sorted(set(batch["chosen"].flatten().tolist()) | set(batch["rejected"].flatten().tolist())))
    agreement["fp32_vs_fp64_stored_wte_rows_max_abs_diff"] = {
        f"after_step{st}": float((snaps[st]["transformer.wte.weight"][row_idx_].double()
                                  - d_snaps[st]["transformer.wte.weight"][row_idx_]).abs().max()) for st in (1, 2)}
    agreement["fp32_vs_fp64_stored_wte_rows_elements_over_1e-5"] = {
        f"after_step{st}": int(((snaps[st]["transformer.wte.weight"][row_idx_].double()
                                 - d_snaps[st]["transformer.wte.weight"][row_idx_]).abs() > 1e-5).sum())
        for st in (1, 2)}
    g1 = d_snaps["grad1"]["transformer.wte.weight"].abs()
    agreement["wte_grad_step1"] = {
        "median_abs_all_rows": float(g1.median()), "median_abs_stored_rows": float(g1[row_idx_].median()),
        "fraction_stored_row_elements_below_1e-7": float((g1[row_idx_] < 1e-7).double().mean()),
        "note": "the DPO loss is small in scale (mean log-probs, beta 0.1), so many wte gradient elements are "
                "near AdamW eps=1e-8, where m/(sqrt(v)+eps) is ill-conditioned: this is why wte differs more "
                "between fp32 and fp64 than the other tensors"}

    # Per-token selected log-probs at step 0 (policy == reference), for debugging compute_logprobs.
    with torch.no_grad():
        m0 = load_model()
        tok_c = token_logprobs(m0(batch["chosen"]).logits, batch["chosen"])
        tok_r = token_logprobs(m0(batch["rejected"]).logits, batch["rejected"])

    row_ids = sorted(set(batch["chosen"].flatten().tolist()) | set(batch["rejected"].flatten().tolist()))
    row_idx = torch.tensor(row_ids, dtype=torch.long)
    tensors = {
        "batch.chosen_input_ids": batch["chosen"], "batch.rejected_input_ids": batch["rejected"],
        "batch.chosen_mask": batch["chosen_mask"].long(), "batch.rejected_mask": batch["rejected_mask"].long(),
        "step0.token_logprobs_chosen": tok_c, "step0.token_logprobs_rejected": tok_r,
        "wte_row_ids": row_idx,
    }
    for step in (1, 2):
        s, us = snaps[step], u_snaps[step]
        for name in ("transformer.h.0.attn.c_attn.weight", "transformer.ln_f.weight"):
            tensors[f"after_step{step}.{name}"] = s[name]
            tensors[f"untied.after_step{step}.{name}"] = us[name]
        tensors[f"after_step{step}.transformer.wte.weight.rows"] = s["transformer.wte.weight"][row_idx]
        tensors[f"untied.after_step{step}.transformer.wte.weight.rows"] = us["transformer.wte.weight"][row_idx]
        tensors[f"untied.after_step{step}.lm_head.weight.rows"] = us["lm_head.weight"][row_idx]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT_DIR / "tensors.safetensors"))
    os.chmod(OUT_DIR / "tensors.safetensors", 0o644)

    # Whole-tensor stats of the wte update (float64), since only rows are stored.
    w0 = load_model().transformer.wte.weight.detach().double()
    wte_stats = {}
    for tag, sn in (("tied", snaps), ("untied", u_snaps)):
        for step in (1, 2):
            w = sn[step]["transformer.wte.weight"].double()
            wte_stats[f"{tag}.after_step{step}"] = {"sum": float(w.sum()), "l2": float(w.norm()),
                                                    "update_l2": float((w - w0).norm()),
                                                    "update_max_abs": float((w - w0).abs().max())}

    def collate_json(c):
        return {"shape": list(c["chosen"].shape),
                "chosen_input_ids": c["chosen"].tolist(), "rejected_input_ids": c["rejected"].tolist(),
                "chosen_mask": c["chosen_mask"].long().tolist(), "rejected_mask": c["rejected_mask"].long().tolist()}

    ref = {
        "description": "DPO reference (book ch07/04 dpo-from-scratch.ipynb) on tiny-gpt2-a; see README.md",
        "source": {"notebook": "rasbt/LLMs-from-scratch ch07/04_preference-tuning-with-dpo/dpo-from-scratch.ipynb",
                   "book_repo_commit": "28c65cdfbc3338e2e040016eea4b7fdf556e4d57",
                   "dataset": "instruction-data-with-preference.json",
                   "dataset_sha256": hashlib.sha256(DATA_PATH.read_bytes()).hexdigest(),
                   "model": "tests/fixtures/tiny-gpt2-a (policy init and frozen reference)"},
        "split": {"num_entries": n, "train_fraction": 0.85, "test_fraction": 0.1,
                  "val": "remainder (nominally 5%)", "train": tr, "test": te, "val_size": va,
                  "order": "train = data[:935], test = data[935:1045], val = data[1045:] (no shuffle before splitting)",
                  "formula": "train = int(n*0.85); test = int(n*0.1); val = n - train - test"},
        "config": {"pad_token_id": PAD_ID, "allowed_max_length": ALLOWED_MAX_LENGTH,
                   "allowed_max_length_notebook": 1024, "mask_prompt_tokens": True, "prompt_mask_offset": 2,
                   "beta": BETA, "logprob_reduction_notebook": "mean",
                   "optimizer": {"type": "torch.optim.AdamW", "lr": LR, "lr_notebook": 5e-6, "betas": list(BETAS),
                                 "eps": EPS, "weight_decay": WEIGHT_DECAY,
                                 "params": "all policy parameters (incl. biases, LayerNorm, embeddings)"},
                   "num_steps": NUM_STEPS, "dropout": 0.0, "batch_size": NUM_EXAMPLES, "shuffle": False},
        "examples": [{"entry_index": i, **entries[i], "prompt_text": format_input(entries[i]),
                      "prompt_ids": items[i]["prompt"], "chosen_ids": items[i]["chosen"],
                      "rejected_ids": items[i]["rejected"], "prompt_len": len(items[i]["prompt"]),
                      "chosen_len": len(items[i]["chosen"]), "rejected_len": len(items[i]["rejected"])}
                     for i in range(NUM_EXAMPLES)],
        "collate_untruncated": collate_json(full),
        "batch": collate_json(batch),
        "counted_labels_per_row": {"chosen": (batch["chosen_mask"][:, 1:].sum(1)).tolist(),
                                   "rejected": (batch["rejected_mask"][:, 1:].sum(1)).tolist()},
        "tied": {"stages": stages, "training_losses": train_losses,
                 "grad_norm_f64_each_step": gnorms, "wte_full_stats": {k: v for k, v in wte_stats.items() if k.startswith("tied.")}},
        "untied": {"stages": u_stages, "training_losses": u_train_losses,
                   "grad_norm_f64_each_step": u_gnorms,
                   "wte_full_stats": {k: v for k, v in wte_stats.items() if k.startswith("untied.")}},
        "wte_row_ids": row_ids,
        "reference_agreement": agreement,
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in tensors.items()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "tiktoken": tiktoken.__version__, "safetensors": safetensors.__version__,
                     "numpy": np.__version__, "threads": torch.get_num_threads(), "device": "cpu"},
        "checks": checks,
        "command": "python scripts/reference/dpo_reference.py",
    }
    (OUT_DIR / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps({k: {s: ref["tied"]["stages"][s]["mean"]["loss"] for s in ref["tied"]["stages"]}
                      for k in ["loss"]}, indent=1))
    for c in checks:
        print("ok:", c)


if __name__ == "__main__":
    main()
