#!/usr/bin/env python3
"""The book's chapter 5 pretraining run in plain PyTorch, to set Ember's curve beside.

Same model (GPT-2 small, context 256, dropout 0.1, no QKV bias, untied head), same
data (the-verdict split 90/10 by characters, windows of 256 with stride 256, batch 2,
shuffled, last partial batch dropped), same optimizer (AdamW lr 4e-4, weight decay
0.1), same evaluation (after the first step and every 5 steps, 5 batches of each
split, taken in order). Token ids come from Ember's tokenizer so both sides see the
same tokens:

  ember tokenize --json < train.txt > train.json   (the first 90% of the characters)
  ember tokenize --json < val.txt   > val.json
  python3 bench/book_pretrain_reference.py --train train.json --val val.json --init torch

--init torch keeps PyTorch's layer defaults (the book's code); --init gpt2 draws every
matrix from N(0, 0.02) with zero biases (GPT-2's scheme). Prints one JSON object per
evaluation: {"step", "train_loss", "val_loss"} (step 1 = after the first update).
"""
import argparse, json, math
import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--init", choices=["torch", "gpt2"], default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--emb", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--drop", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=123)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    ctx, d, L, H, V = a.context, a.emb, a.layers, a.heads, 50257
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def windows(path):
        ids = json.load(open(path))["ids"]
        xs = [ids[i:i + ctx] for i in range(0, len(ids) - ctx, ctx)]
        ys = [ids[i + 1:i + ctx + 1] for i in range(0, len(ids) - ctx, ctx)]
        return torch.tensor(xs, device=dev), torch.tensor(ys, device=dev)

    trx, try_ = windows(a.train)
    vax, vay = windows(a.val)

    class Attention(nn.Module):
        def __init__(s):
            super().__init__()
            s.qkv = nn.Linear(d, 3 * d, bias=False)
            s.proj = nn.Linear(d, d)
            s.drop = nn.Dropout(a.drop)
            s.register_buffer("mask", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1))

        def forward(s, x):
            b, t, _ = x.shape
            q, k, v = s.qkv(x).split(d, 2)
            q, k, v = (z.view(b, t, H, d // H).transpose(1, 2) for z in (q, k, v))
            w = (q @ k.transpose(-2, -1)) / math.sqrt(d // H)
            w = s.drop(torch.softmax(w.masked_fill(s.mask[:t, :t], float("-inf")), -1))
            return s.proj((w @ v).transpose(1, 2).reshape(b, t, d))

    class Block(nn.Module):
        def __init__(s):
            super().__init__()
            s.ln1, s.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            s.att = Attention()
            s.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
            s.drop = nn.Dropout(a.drop)

        def forward(s, x):
            x = x + s.drop(s.att(s.ln1(x)))
            return x + s.drop(s.ff(s.ln2(x)))

    class GPT(nn.Module):
        def __init__(s):
            super().__init__()
            s.wte, s.wpe = nn.Embedding(V, d), nn.Embedding(ctx, d)
            s.drop = nn.Dropout(a.drop)
            s.blocks = nn.Sequential(*[Block() for _ in range(L)])
            s.lnf = nn.LayerNorm(d)
            s.head = nn.Linear(d, V, bias=False)

        def forward(s, x):
            t = x.shape[1]
            h = s.drop(s.wte(x) + s.wpe(torch.arange(t, device=x.device)))
            return s.head(s.lnf(s.blocks(h)))

    model = GPT().to(dev)
    if a.init == "gpt2":
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                nn.init.normal_(param, 0, 0.02)
            elif "ln" not in name:
                nn.init.zeros_(param)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1)

    def loss_of(x, y):
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def evaluate(x, y, batches=5):
        model.eval()
        with torch.no_grad():
            n = min(batches, math.ceil(len(x) / a.batch))
            losses = [loss_of(x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch]).item()
                      for i in range(n)]
        model.train()
        return sum(losses) / len(losses)

    step = 0
    for _ in range(a.epochs):
        perm = torch.randperm(len(trx), device=dev)
        for b in range(len(trx) // a.batch):
            idx = perm[b * a.batch:(b + 1) * a.batch]
            loss = loss_of(trx[idx], try_[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if (step - 1) % 5 == 0:
                print(json.dumps({"step": step, "train_loss": round(evaluate(trx, try_), 4),
                                  "val_loss": round(evaluate(vax, vay), 4), "init": a.init}), flush=True)


if __name__ == "__main__":
    main()
