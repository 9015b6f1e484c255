#!/usr/bin/env python3
"""PyTorch reference fixture for the book's Appendix A (tests/fixtures/appendix-a/).

Mirrors rasbt/LLMs-from-scratch appendix-A/01_main-chapter-code/code-part1.ipynb (sections A.3-A.8; code-part2.ipynb
A.9.2 repeats the same training run on a GPU and prints the same losses) and exercise-solutions.ipynb (A.3:
parameter count of NeuralNetwork(2, 2)). This file re-implements the appendix's steps in the notebook's cell order,
so that torch's global random generator is consumed exactly as in the notebook, and records everything random
(initial weights, the random input, the DataLoader batch orders) so that a port without torch's RNG can replay it.

Run (from the repository root, venv as in tests/fixtures/appendix-a/README.md):
    python scripts/reference/appendix_a_reference.py
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests/fixtures/appendix-a"

checks = []


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)
    checks.append(msg)


def fl(t):
    """float32 tensor -> nested lists of Python floats (exact: f32 -> f64 is lossless)."""
    return t.detach().double().tolist()


class NeuralNetwork(torch.nn.Module):
    """Appendix A.5: Linear(in, 30) -> ReLU -> Linear(30, 20) -> ReLU -> Linear(20, out)."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(num_inputs, 30), torch.nn.ReLU(),
            torch.nn.Linear(30, 20), torch.nn.ReLU(),
            torch.nn.Linear(20, num_outputs))

    def forward(self, x):
        return self.layers(x)


class ToyDataset(Dataset):
    """Appendix A.6 ToyDataset; additionally logs which indices the DataLoader asked for, in order."""

    def __init__(self, X, y):
        self.features, self.labels, self.log = X, y, []

    def __getitem__(self, index):
        self.log.append(int(index))
        return self.features[index], self.labels[index]

    def __len__(self):
        return self.labels.shape[0]


def iterate(loader, ds):
    """Runs one pass over loader and returns the per-batch index lists."""
    out = []
    for x, y in loader:
        n = x.shape[0]
        out.append(ds.log[-n:])
    return out


def state(model, prefix):
    return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main():
    tensors, ref = {}, {}

    # ---------------------------------------------------------------- A.3 / A.4: logistic regression autograd
    y = torch.tensor([1.0])
    x1 = torch.tensor([1.1])
    w1 = torch.tensor([2.2], requires_grad=True)
    b = torch.tensor([0.0], requires_grad=True)
    z = x1 * w1 + b
    a = torch.sigmoid(z)
    loss = F.binary_cross_entropy(a, y)
    g_w1, = torch.autograd.grad(loss, w1, retain_graph=True)
    g_b, = torch.autograd.grad(loss, b, retain_graph=True)
    loss.backward()
    check(torch.equal(w1.grad, g_w1) and torch.equal(b.grad, g_b), "A.4: grad() == backward() gradients")
    check(round(loss.item(), 4) == 0.0852, "A.3: loss prints as 0.0852")
    check(round(g_w1.item(), 4) == -0.0898 and round(g_b.item(), 4) == -0.0817, "A.4: grads print as -0.0898, -0.0817")
    # closed form: dL/dz = a - y (sigmoid + BCE), dL/dw1 = (a - y) x1, dL/db = a - y
    check(abs(g_b.item() - (a.item() - 1.0)) < 1e-7 and abs(g_w1.item() - (a.item() - 1.0) * 1.1) < 1e-7,
          "A.4: gradients equal the closed form (a - y) * x1 and (a - y)")
    ref["autograd"] = {
        "description": "A.3/A.4: y=1, x1=1.1, w1=2.2, b=0; z = x1*w1 + b; a = sigmoid(z); "
                       "loss = binary_cross_entropy(a, y) = -(y*ln(a) + (1-y)*ln(1-a)) (torch clamps ln at -100)",
        "y": y.item(), "x1": x1.item(), "w1": w1.item(), "b": b.item(), "z": z.item(), "a": a.item(),
        "loss": loss.item(), "grad_w1": g_w1.item(), "grad_b": g_b.item(),
        "printed": {"loss": "tensor(0.0852)", "grad_w1": "tensor([-0.0898])", "grad_b": "tensor([-0.0817])"},
        "all_values_are": "float32 results widened to float64 for JSON",
    }

    # ---------------------------------------------------------------- A.5: parameter counts, seeded model, forward
    def nparams(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    unseeded = NeuralNetwork(50, 3)  # cell 35 (random, unrecorded; only its size matters)
    check(nparams(unseeded) == 2213, "A.5: NeuralNetwork(50, 3) has 2213 trainable parameters")
    check(nparams(NeuralNetwork(2, 2)) == 752, "exercise A.3: NeuralNetwork(2, 2) has 752 trainable parameters")
    torch.manual_seed(123)  # cell 39
    model50 = NeuralNetwork(50, 3)
    check([round(v, 4) for v in model50.layers[0].weight[0, :3].tolist()] == [-0.0577, 0.0047, -0.0702],
          "A.5: seeded layers[0].weight[0, :3] prints as -0.0577, 0.0047, -0.0702")
    torch.manual_seed(123)  # cell 41
    X = torch.rand((1, 50))
    with torch.no_grad():
        out = model50(X)
        probs = torch.softmax(out, dim=1)
    check([round(v, 4) for v in out[0].tolist()] == [-0.1262, 0.1080, -0.1792], "A.5: out prints as [-0.1262, 0.1080, -0.1792]")
    check([round(v, 4) for v in probs[0].tolist()] == [0.3113, 0.3934, 0.2952], "A.5: softmax prints as [0.3113, 0.3934, 0.2952]")
    tensors.update(state(model50, "nn50x3"))
    tensors["nn50x3.X"] = X.contiguous()
    ref["network_50_3"] = {
        "num_params": nparams(model50), "num_params_2_2_exercise_A3": 752,
        "per_layer": {k: list(v.shape) for k, v in model50.state_dict().items()},
        "seeded_weights": "torch.manual_seed(123); NeuralNetwork(50, 3) -> tensors nn50x3.layers.{0,2,4}.{weight,bias}",
        "X": "torch.manual_seed(123); X = torch.rand((1, 50)) -> tensor nn50x3.X (and X below)",
        "X_values": fl(X), "logits": fl(out), "softmax": fl(probs),
        "printed": {"logits": "[[-0.1262, 0.1080, -0.1792]]", "softmax": "[[0.3113, 0.3934, 0.2952]]"},
    }

    # ---------------------------------------------------------------- A.6: toy data and DataLoaders
    X_train = torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [-0.5, 2.6], [2.3, -1.1], [2.7, -1.5]])
    y_train = torch.tensor([0, 0, 0, 1, 1])
    X_test = torch.tensor([[-0.8, 2.8], [2.6, -1.6]])
    y_test = torch.tensor([0, 1])
    train_ds, test_ds = ToyDataset(X_train, y_train), ToyDataset(X_test, y_test)

    torch.manual_seed(123)  # cell 50
    loader_demo = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=0)
    test_loader = DataLoader(test_ds, batch_size=2, shuffle=False, num_workers=0)  # cell 51
    demo_order = iterate(loader_demo, train_ds)  # cell 52
    check(demo_order == [[3, 1], [0, 2], [4]], "A.6: first demo loader order [[3,1],[0,2],[4]] as printed")
    train_loader = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=0, drop_last=True)  # cell 53
    demo_order_drop = iterate(train_loader, train_ds)  # cell 54
    check(demo_order_drop == [[0, 2], [3, 1]], "A.6: drop_last demo order [[0,2],[3,1]] as printed")

    # ---------------------------------------------------------------- A.7: training loop
    torch.manual_seed(123)  # cell 57
    model = NeuralNetwork(num_inputs=2, num_outputs=2)
    tensors.update(state(model, "toy.init"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    epochs = []
    for epoch in range(3):
        model.train()
        batches = []
        for batch_idx, (features, labels) in enumerate(train_loader):
            idx = train_ds.log[-features.shape[0]:]
            logits = model(features)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batches.append({"indices": idx, "labels": labels.tolist(), "logits": fl(logits), "loss": loss.item(),
                            "printed": f"Epoch: {epoch+1:03d}/003 | Batch {batch_idx+1:03d}/{len(train_loader):03d}"
                                       f" | Train/Val Loss: {loss:.2f}"})
        model.eval()
        tensors.update(state(model, f"toy.after_epoch{epoch + 1}"))
        epochs.append({"epoch": epoch + 1, "batches": batches})
    printed = [bt["printed"].split(": ")[-1] for e in epochs for bt in e["batches"]]
    check(printed == ["0.75", "0.65", "0.44", "0.13", "0.03", "0.00"], "A.7: printed batch losses 0.75 0.65 0.44 0.13 0.03 0.00")

    model.eval()  # cells 58-62
    with torch.no_grad():
        outputs = model(X_train)
        test_outputs = model(X_test)
    probas = torch.softmax(outputs, dim=1)
    predictions = torch.argmax(probas, dim=1)
    check(torch.equal(predictions, torch.argmax(outputs, dim=1)), "A.7: argmax of probas == argmax of logits")
    check([[round(v, 4) for v in r] for r in outputs.tolist()] ==
          [[2.8569, -4.1618], [2.5382, -3.7548], [2.0944, -3.1820], [-1.4814, 1.4816], [-1.7176, 1.7342]],
          "A.7: training-set logits print as in the appendix")
    test_probas = torch.softmax(test_outputs, dim=1)
    test_predictions = torch.argmax(test_outputs, dim=1)

    def compute_accuracy(model, dataloader, ds):
        """Appendix A.7 compute_accuracy: correct / total over one pass of the loader (argmax of logits)."""
        model.eval()
        correct, total, order = 0.0, 0, []
        for features, labels in dataloader:
            order.append(ds.log[-features.shape[0]:])
            with torch.no_grad():
                logits = model(features)
            compare = labels == torch.argmax(logits, dim=1)
            correct += torch.sum(compare)
            total += len(compare)
        return (correct / total).item(), total, order

    train_acc, train_total, train_acc_order = compute_accuracy(model, train_loader, train_ds)  # cell 64
    test_acc, test_total, test_acc_order = compute_accuracy(model, test_loader, test_ds)  # cell 65
    check(train_acc == 1.0 and test_acc == 1.0, "A.7: compute_accuracy train 1.0, test 1.0")
    check(train_total == 4, "A.7: compute_accuracy(train_loader) sees only 4 of 5 points (drop_last=True)")

    tensors.update({"toy.X_train": X_train, "toy.X_test": X_test, "toy.final_logits_train": outputs,
                    "toy.final_logits_test": test_outputs})
    ref["toy_training"] = {
        "X_train": fl(X_train), "y_train": y_train.tolist(), "X_test": fl(X_test), "y_test": y_test.tolist(),
        "model": "NeuralNetwork(2, 2): layers.0 Linear(2,30), ReLU, layers.2 Linear(30,20), ReLU, layers.4 Linear(20,2)",
        "init": "torch.manual_seed(123) then NeuralNetwork(2, 2) -> tensors toy.init.layers.{0,2,4}.{weight,bias}",
        "initial_weights": {k: fl(v) for k, v in model_state_init(tensors).items()},
        "optimizer": {"type": "torch.optim.SGD", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0},
        "loss": "F.cross_entropy(logits, labels) (mean over the batch)",
        "step_order": "logits = model(x); loss; optimizer.zero_grad(); loss.backward(); optimizer.step()",
        "dataloader": {"train": {"batch_size": 2, "shuffle": True, "drop_last": True, "num_workers": 0},
                       "test": {"batch_size": 2, "shuffle": False, "drop_last": False, "num_workers": 0},
                       "batches_per_epoch": len(train_loader)},
        "demo_loader_orders": {
            "cell52_shuffle_no_drop_last": demo_order, "cell54_shuffle_drop_last": demo_order_drop,
            "note": "torch.manual_seed(123) before the first loader; each pass draws from torch's global RNG"},
        "epochs": epochs,
        "batch_losses": [bt["loss"] for e in epochs for bt in e["batches"]],
        "batch_indices": [[bt["indices"] for bt in e["batches"]] for e in epochs],
        "final_logits_train": fl(outputs), "final_probas_train": fl(probas),
        "final_predictions_train": predictions.tolist(),
        "final_correct_train": (predictions == y_train).tolist(),
        "final_num_correct_train": int(torch.sum(predictions == y_train)),
        "final_logits_test": fl(test_outputs), "final_probas_test": fl(test_probas),
        "final_predictions_test": test_predictions.tolist(),
        "compute_accuracy": {"train": train_acc, "train_examples_counted": train_total,
                             "train_pass_order": train_acc_order, "test": test_acc,
                             "test_examples_counted": test_total, "test_pass_order": test_acc_order},
        "printed": {"losses": printed,
                    "final_logits_train": "[[2.8569,-4.1618],[2.5382,-3.7548],[2.0944,-3.1820],[-1.4814,1.4816],[-1.7176,1.7342]]",
                    "final_probas_train": "[[0.9991,0.0009],[0.9982,0.0018],[0.9949,0.0051],[0.0491,0.9509],[0.0307,0.9693]]"},
    }

    # Replay check: only the recorded data (initial weights, batch indices, X/y), no DataLoader and no RNG, in
    # float32 and float64, to show the fixture is enough for a port to replay the run.
    def replay(dtype):
        m = NeuralNetwork(2, 2).to(dtype)
        m.load_state_dict({k: v.to(dtype) for k, v in model_state_init(tensors).items()})
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        losses = []
        for ep in ref["toy_training"]["batch_indices"]:
            for idx in ep:
                loss = F.cross_entropy(m(X_train.to(dtype)[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        with torch.no_grad():
            return losses, m(X_train.to(dtype)), m(X_test.to(dtype))

    l32, o32, t32 = replay(torch.float32)
    l64, o64, t64 = replay(torch.float64)
    ref_losses = ref["toy_training"]["batch_losses"]
    check(max(abs(a - b) for a, b in zip(l32, ref_losses)) < 1e-6, "replay from recorded init + order (fp32) matches the losses")
    ref["toy_training"]["replay_agreement"] = {
        "fp32_replay_loss_max_abs_diff": max(abs(a - b) for a, b in zip(l32, ref_losses)),
        "fp32_replay_logits_max_abs_diff": float(max((o32 - outputs).abs().max(), (t32 - test_outputs).abs().max())),
        "fp64_replay_loss_max_abs_diff": max(abs(a - b) for a, b in zip(l64, ref_losses)),
        "fp64_replay_logits_max_abs_diff": float(max((o64 - outputs.double()).abs().max(),
                                                     (t64 - test_outputs.double()).abs().max())),
        "note": "training replayed from toy.init.* with the recorded batch_indices (no DataLoader, no RNG)"}

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT_DIR / "tensors.safetensors"))
    os.chmod(OUT_DIR / "tensors.safetensors", 0o644)
    import safetensors
    ref["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}
    ref["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                       "safetensors": safetensors.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    ref["source"] = {"notebooks": ["appendix-A/01_main-chapter-code/code-part1.ipynb",
                                   "appendix-A/01_main-chapter-code/code-part2.ipynb",
                                   "appendix-A/01_main-chapter-code/exercise-solutions.ipynb"],
                     "book_repo_commit": "28c65cdfbc3338e2e040016eea4b7fdf556e4d57"}
    ref["checks"] = checks
    ref["command"] = "python scripts/reference/appendix_a_reference.py"
    (OUT_DIR / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print("batch losses:", ref["toy_training"]["batch_losses"])
    print("batch indices:", ref["toy_training"]["batch_indices"])
    for c in checks:
        print("ok:", c)


def model_state_init(tensors):
    return {k[len("toy.init."):]: v for k, v in tensors.items() if k.startswith("toy.init.")}


if __name__ == "__main__":
    main()
