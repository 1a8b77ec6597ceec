#!/usr/bin/env python3
"""Replays the first optimizer steps of a qpeft run in PyTorch and compares them step by step.

The run must have been made with dropout off and --dump-batches, e.g.

    qpeft train recipes/stsb.toml --set model.dropout=0 --set adapter.dropout=0 \
        --dump-batches 20 --out runs/equiv-stsb

This script reads only files: the run's init checkpoint (`RUN/init/model.safetensors`: packed Q,
dequantized here from the documented bit layout, `lora_A`/`lora_B` and their metadata; the base
model's other tensors), the head's initial values and the batches in qpeft's order
(`RUN/dump/`). It builds transformers' `BertForSequenceClassification` with a PEFT-style LoRA
wrapper around every adapted linear (y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ, s = α/r), trains the adapter
factors and the head with torch.optim.AdamW (decay on weights, never on biases), transformers'
learning-rate schedule, torch's clip_grad_norm_ and SRR's preserved-component scaling (`grad`:
gradients of the first k components × γ before clipping; `update`: their AdamW step × γ), with
`train.optimizer = "riemannian-adamw"` the Riemannian preconditioning of each adapter's gradients
after clipping, and compares each step's loss and the final trainable tensors with qpeft's.

Prints one JSON object; exits 1 when a loss or a final tensor differs by more than --tolerance
(relative: |a − b| / max|b| per tensor, |a − b| / |b| per loss), or the first step's gradients
(`RUN/dump/gradients.safetensors`; both sides start from the same values there) do. --float64 also
replays in float64 and reports how far each f32 implementation is from that exact trajectory.
--write-expected FILE writes PyTorch's per-step losses, first-step gradients and final tensors as
safetensors (the CI fixture of tests/training_equivalence.rs).

--dev is the epoch-level check: from a run made with dropout on and --dump-batches at least its
step count (the dump then spans the whole run, which also scores its dev set as usual), it trains
every step in qpeft's order with the run's dropout rates (torch draws its own masks, seeded by
--seed) and scores the dev set after each epoch, tokenized here by the run's tokenizer.json as
qpeft does (checked: qpeft's first epoch must be the training set as tokenized here); it prints
both implementations' dev scores and training losses per epoch. MRPC and STS-B runs.

    qpeft train recipes/mrpc.toml --set adapter.init=qera-exact --dump-batches 100000 --out runs/e
    check_training.py runs/e --dev --glue-dir GLUE --seed 42 --threads 1

--fixed-params FROZEN compares dropout alone, at fixed trained parameters: FROZEN is RUN resumed
from its epoch-E checkpoint (--epoch E) at a learning rate of 1e-30 with every step logged, so
each loss it logs in epoch E+1 is one qpeft dropout draw at those parameters; here PyTorch draws
--draws masks per step on the same batches (the first with a backward pass, for the gradient
norm qpeft logs), and once runs them without dropout. It prints the per-step differences' mean ±
standard error. scripts/check_dropout.sh makes FROZEN and runs it.

--gradient-draws K checks the gradient's direction under dropout on a whole-run dump: at step 1
and at each epoch's first step (their gradients are dumped, and their starting parameters are the
initial tensors and the epoch checkpoints), PyTorch draws K dropout gradients on the same batch;
qpeft's dumped draw should rank among them like one of them (cosine to the mean of the others).

Needs the bench environment (bench/requirements.txt: torch, transformers, numpy, safetensors).
"""

import argparse
import json
import os
import sys
import tomllib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from e2e_reference import TASKS as E2E_TASKS  # noqa: E402
from e2e_reference import classification_metrics, stsb_metrics  # noqa: E402


def unpack(codes: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Packed rows → codes: a little-endian bit stream along each row (docs/formats.md)."""
    rows = codes.shape[0]
    stream = np.unpackbits(codes, axis=1, bitorder="little")[:, : cols * bits]
    stream = stream.reshape(rows, cols, bits).astype(np.int64)
    return (stream << np.arange(bits)).sum(axis=2)


def dequantize(f, base: str, bits: int, cols: int, group_width: int) -> np.ndarray:
    """scale · (level(code) − zero) per (row, group of the column), `[out, in]` f32; level is
    the code itself on uniform grids and the `.qlevels` codebook on NF grids (docs/formats.md).
    Format version 3 stores an MXINT block's step as an E8M0 byte `.qexp` (step 2^(byte − 127 −
    (bits − 2)), zero 2^(bits−1) − 1), zeros as U8, no zero on NF grids, and `.qgroup` only
    where a column's group is not column // group_width; versions 1 and 2 store F32 scales and
    zeros and every `.qgroup`."""
    keys = set(f.keys())
    if f"{base}.qexp" in keys:
        exponent = f.get_tensor(f"{base}.qexp").astype(np.int64) - 127 - (bits - 2)
        scale = np.ldexp(np.float32(1), exponent).astype(np.float32)
        zero = np.full(scale.shape, 2 ** (bits - 1) - 1, dtype=np.float32)
    else:
        scale = f.get_tensor(f"{base}.qscale").astype(np.float32)
        zero = (
            f.get_tensor(f"{base}.qzero").astype(np.float32)
            if f"{base}.qzero" in keys
            else np.zeros_like(scale)
        )
    if f"{base}.qgroup" in keys:
        group = f.get_tensor(f"{base}.qgroup").astype(np.int64)
    else:
        group = np.arange(cols) // group_width
    codes = unpack(f.get_tensor(f"{base}.qcodes"), bits, cols)
    levels = codes.astype(np.float32)
    if f"{base}.qlevels" in f.keys():
        levels = f.get_tensor(f"{base}.qlevels")[codes]
    # In f32, as qpeft computes it: the base weights are then the same floats on both sides.
    return scale[:, group] * (levels - zero[:, group])


class LoraLinear(torch.nn.Module):
    """PEFT's LoRA layer: base(x) + s · lora_B(lora_A(dropout(x)))."""

    def __init__(self, base: torch.nn.Linear, rank: int, scale: float, dropout: float):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False)
        self.dropout = torch.nn.Dropout(dropout)
        self.scale = scale

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale


def load_tensors(path: Path) -> dict:
    with safe_open(str(path), framework="np") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def build(run: Path, recipe: dict, initial: dict, dropout: bool):
    """The classifier with dequantized Q, LoRA wrappers and qpeft's initial adapters and head;
    with `dropout`, the run's dropout rates (the recipe's `model.dropout` over the config's, as
    qpeft reads them; `adapter.dropout` on each adapter's input), else none."""
    init = run / "init"
    config = BertConfig.from_json_file(str(init / "config.json"))
    rate = recipe["model"].get("dropout") if dropout else 0.0
    if rate is not None:
        config.hidden_dropout_prob = rate
        config.attention_probs_dropout_prob = rate
        config.classifier_dropout = rate
    adapter_dropout = recipe["adapter"]["dropout"] if dropout else 0.0
    if adapter_dropout and recipe["adapter"]["dropout_placement"] != "input":
        raise SystemExit("only adapter.dropout_placement = \"input\" (PEFT's) is replayed")
    config.num_labels = initial["classifier.weight"].shape[0]
    config.problem_type = (
        "regression" if config.num_labels == 1 else "single_label_classification"
    )
    config._attn_implementation = "eager"  # the plain softmax(QKᵀ/√d)·V, as qpeft computes it
    model = BertForSequenceClassification(config)
    with safe_open(str(init / "model.safetensors"), framework="np") as f:
        meta = f.metadata()
        quant = json.loads(meta["qpeft"])
        adapters = json.loads(meta["qpeft_adapters"])
        state, lora = {}, {}
        for name in f.keys():
            key = name[len("bert.") :] if name.startswith("bert.") else name
            if key.endswith(".qcodes"):
                base = name[: -len(".qcodes")]
                module = model.bert.get_submodule(key[: -len(".qcodes")])
                if isinstance(module, torch.nn.Embedding):  # one grid per row
                    bits, cols, width = quant["embedding_bits"], module.embedding_dim, module.embedding_dim
                else:
                    bits, cols = quant["bits"], module.in_features
                    width = quant["group"] or cols
                state[key[: -len(".qcodes")] + ".weight"] = dequantize(f, base, bits, cols, width)
            elif key.endswith((".qexp", ".qscale", ".qzero", ".qgroup", ".qlevels")) or key.startswith("classifier."):
                continue  # the head's start is qpeft's (initial.safetensors)
            elif key.endswith((".lora_A", ".lora_B")):
                lora[key] = f.get_tensor(name)
            else:
                state[key] = f.get_tensor(name)
    missing, unexpected = model.bert.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False
    )
    unexpected = [u for u in unexpected if not u.endswith("position_ids")]
    assert not unexpected, f"unexpected tensors in the init checkpoint: {unexpected}"
    assert all(m.startswith("pooler.") for m in missing), f"missing tensors: {missing}"
    scale = adapters["lora_alpha"] / adapters["rank"]
    wrapped = {}
    for layer in adapters["layers"]:
        parent = model.bert.get_submodule(layer.rsplit(".", 1)[0])
        child = layer.rsplit(".", 1)[1]
        wrapper = LoraLinear(getattr(parent, child), adapters["rank"], scale, adapter_dropout)
        setattr(parent, child, wrapper)
        wrapped[layer] = wrapper
    # qpeft must start from the init checkpoint's factors exactly.
    for layer, wrapper in wrapped.items():
        for factor in ("lora_A", "lora_B"):
            ours = initial[f"bert.{layer}.{factor}.weight"]
            theirs = lora[f"{layer}.{factor}"]
            if not np.array_equal(ours, theirs):
                raise SystemExit(f"{layer}.{factor}: qpeft's initial value is not the init checkpoint's")
    loaded = {}
    for name, value in initial.items():
        module_name, leaf = name.rsplit(".", 1)
        module = model.get_submodule(module_name)
        getattr(module, leaf).data.copy_(torch.from_numpy(value.copy()))
        loaded[name] = getattr(module, leaf)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in loaded.values():
        p.requires_grad_(True)
    return model, loaded, adapters


def preserved_factors(adapters: dict, recipe: dict):
    """Per adapted layer, the factor on each of its r components (None when nothing is scaled)."""
    a = recipe["adapter"]
    if a["preserved_scaling"] == "off":
        return {}
    out = {}
    for layer, info in adapters["layers"].items():
        k = info["preserved"]
        if k == 0:
            continue
        sv = info["singular_values"]
        factors = []
        for i in range(adapters["rank"]):
            if i >= k:
                factors.append(1.0)
            elif a["gamma_form"] == "constant":
                factors.append(a["gamma"])
            elif i < len(sv) and max(sv) > 0:
                s_max = max(sv)
                factors.append(min(max((s_max - sv[i]) / (s_max + 5 * sv[i]), 0.0), 1.0))
            else:
                factors.append(0.1)
        out[layer] = torch.tensor(factors, dtype=torch.float64)
    return out


def riemannian_precondition(params: dict, adapters: dict, delta: float):
    """Zhang & Pilanci's preconditioning, in place: ∇A ← (BᵀB + δI)⁻¹∇A and ∇B ← ∇B(AAᵀ + δI)⁻¹
    with PEFT's A [r, in] and B [out, r] before the step; the Gram matrices formed and inverted in
    float64."""
    eye = torch.eye(adapters["rank"], dtype=torch.float64)
    for layer in adapters["layers"]:
        a = params[f"bert.{layer}.lora_A.weight"]
        b = params[f"bert.{layer}.lora_B.weight"]
        b64, a64 = b.detach().double(), a.detach().double()
        inverse_btb = torch.linalg.inv(b64.T @ b64 + delta * eye).to(a.dtype)
        inverse_aat = torch.linalg.inv(a64 @ a64.T + delta * eye).to(b.dtype)
        a.grad = inverse_btb @ a.grad
        b.grad = b.grad @ inverse_aat


def schedule(optimizer, recipe: dict, warmup: int, total: int):
    kind = recipe["train"]["schedule"]
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def step_loss(model, batches: dict, step: dict, dtype=torch.float32, backward=False) -> float:
    """One dumped optimizer step's loss: its micro-batches' (length passes') mean losses, each
    divided by the step's divisor as qpeft divides it; with `backward`, their gradients added up."""
    s, total = step["step"], 0.0
    for j in range(step["micro_batches"]):
        key = f"step-{s}.batch-{j}."
        labels = torch.from_numpy(batches[key + "labels"].copy())
        if labels.is_floating_point():
            labels = labels.to(dtype)
        out = model(
            input_ids=torch.from_numpy(batches[key + "input_ids"].copy()),
            attention_mask=torch.from_numpy(batches[key + "attention_mask"].copy()),
            token_type_ids=torch.from_numpy(batches[key + "token_type_ids"].copy()),
            labels=labels,
        )
        loss = out.loss / step["divisors"][j]
        if backward:
            loss.backward()
        total += loss.item()
    return total


def replay(run: Path, dtype=torch.float32, dropout=False, after_step=None):
    """Trains on the dumped batches in their order; without `dropout` the run must have had none
    (the step-by-step comparison), with it each side draws its own masks. Returns the trace, the
    per-step losses and learning rates, the final tensors and, without `dropout`, the first
    step's gradients; `after_step(step, model, loss)` is called after every optimizer step."""
    dump = run / "dump"
    trace = json.loads((dump / "trace.json").read_text())
    recipe = trace["recipe"]
    if not dropout and (recipe["adapter"]["dropout"] != 0 or recipe["model"].get("dropout") != 0):
        raise SystemExit(
            "the run trained with dropout: make it with --set model.dropout=0 --set adapter.dropout=0"
        )
    initial = load_tensors(dump / "initial.safetensors")
    batches = load_tensors(dump / "batches.safetensors")
    model, params, adapters = build(run, recipe, initial, dropout)
    model.to(dtype)
    model.train()
    t = recipe["train"]
    decay = [p for n, p in params.items() if n.endswith("weight")]
    no_decay = [p for n, p in params.items() if not n.endswith("weight")]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": t["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=t["learning_rate"],
        betas=(t["beta1"], t["beta2"]),
        eps=t["eps"],
    )
    scheduler = schedule(optimizer, recipe, trace["warmup_steps"], trace["total_steps"])
    factors = preserved_factors(adapters, recipe)
    mode = recipe["adapter"]["preserved_scaling"]
    scaled = []
    for layer, f in factors.items():
        a = params[f"bert.{layer}.lora_A.weight"]  # [r, in]: components are rows
        b = params[f"bert.{layer}.lora_B.weight"]  # [out, r]: components are columns
        f = f.to(a.dtype)
        scaled += [(a, f[:, None]), (b, f[None, :])]
    losses, lrs, grads = [], [], []
    for step in trace["steps"]:
        s = step["step"]
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        total = step_loss(model, batches, step, dtype, backward=True)
        if not dropout and s == 1:
            grads.append({n: p.grad.detach().numpy().copy() for n, p in params.items()})
        if mode == "grad":
            for p, f in scaled:
                p.grad.mul_(f)
        if t["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), t["max_grad_norm"])
        if t.get("optimizer", "adamw") == "riemannian-adamw":
            riemannian_precondition(params, adapters, t["riemannian_delta"])
        before = [p.detach().clone() for p, _ in scaled] if mode == "update" else []
        optimizer.step()
        if mode == "update":
            with torch.no_grad():
                for (p, f), old in zip(scaled, before):
                    p.copy_(old + (p - old) * f)
        scheduler.step()
        losses.append(total)
        lrs.append(lr)
        if after_step is not None:
            after_step(s, model, total)
    final = {n: p.detach().numpy().copy() for n, p in params.items()}
    return trace, losses, lrs, final, grads


# The tasks --dev replays; their readers and metrics are bench/e2e_reference.py's.
DEV_TASKS = ("mrpc", "stsb")


def read_pairs(glue: Path, task: str, split: str) -> tuple:
    """The (text a, text b) pairs and labels of a GLUE split."""
    if task not in DEV_TASKS:
        raise SystemExit(f"--dev replays MRPC and STS-B runs; this run is {task}")
    folder, reader, _ = E2E_TASKS[task]
    rows = reader(glue / folder / f"{split}.tsv")
    return [(a, b) for a, b, _ in rows], np.array([label for _, _, label in rows], dtype=np.float64)


def tokenize(run: Path, pairs: list, max_length: int) -> list:
    """The run's tokenizer.json as qpeft sets it up: longest-first truncation, no padding."""
    tokenizer = Tokenizer.from_file(str(run / "init" / "tokenizer.json"))
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.no_padding()
    return [(e.ids, e.type_ids) for e in tokenizer.encode_batch(pairs)]


def check_training_set(encoded: list, batches: dict, trace: dict, steps_per_epoch: int, subset: bool):
    """qpeft's first epoch must be the training set as this script tokenizes it, each pair once
    (with `subset`, a part of it: `data.max_train_samples`)."""
    seen = Counter()
    for step in trace["steps"][:steps_per_epoch]:
        for j in range(step["micro_batches"]):
            key = f"step-{step['step']}.batch-{j}."
            for ids, types, mask in zip(
                batches[key + "input_ids"], batches[key + "token_type_ids"], batches[key + "attention_mask"]
            ):
                n = int(mask.sum())
                seen[(tuple(ids[:n].tolist()), tuple(types[:n].tolist()))] += 1
    ours = Counter((tuple(i), tuple(t)) for i, t in encoded)
    differ = (seen - ours) if subset else (seen - ours) + (ours - seen)
    if differ:
        raise SystemExit(
            f"qpeft's first epoch ({sum(seen.values())} sequences) is not the training set as "
            f"tokenized here ({sum(ours.values())}): {sum(differ.values())} differ"
        )


def dev_score(task: str, outputs: np.ndarray, labels: np.ndarray) -> dict:
    """qpeft's main score: mean of accuracy and F1 (MRPC), of Pearson and Spearman (STS-B)."""
    prediction = SimpleNamespace(predictions=outputs, label_ids=labels)
    if task == "stsb":
        return stsb_metrics(prediction)
    return classification_metrics(task)(prediction)


def predict(model, encoded: list, batch_size: int = 64) -> np.ndarray:
    """Dropout off, each batch padded to its longest sequence."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.int64)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for row, (i_, t_) in enumerate(chunk):
                ids[row, : len(i_)] = torch.tensor(i_)
                types[row, : len(t_)] = torch.tensor(t_)
                mask[row, : len(i_)] = 1
            logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            out.append(logits.float().numpy())
    model.train()
    out = np.concatenate(out)
    return out[:, 0] if out.shape[1] == 1 else out


def replay_epochs(run: Path, glue: Path, seed: int) -> dict:
    """Trains the whole dumped run with dropout on and scores the dev set after every epoch,
    beside qpeft's own dev scores and training losses (RUN/metrics.jsonl)."""
    trace = json.loads((run / "dump" / "trace.json").read_text())
    recipe = trace["recipe"]
    task, epochs = recipe["data"]["task"], recipe["train"]["epochs"]
    steps_per_epoch = trace["total_steps"] // epochs
    if len(trace["steps"]) != trace["total_steps"] or steps_per_epoch * epochs != trace["total_steps"]:
        raise SystemExit(
            f"the dump holds {len(trace['steps'])} of the run's {trace['total_steps']} steps over "
            f"{epochs} epochs: make it with --dump-batches at least the run's step count"
        )
    max_length = recipe["train"]["max_length"]
    train_pairs, _ = read_pairs(glue, task, "train")
    check_training_set(
        tokenize(run, train_pairs, max_length),
        load_tensors(run / "dump" / "batches.safetensors"),
        trace,
        steps_per_epoch,
        recipe["data"].get("max_train_samples") is not None,
    )
    dev_pairs, dev_labels = read_pairs(glue, task, "dev")
    dev = tokenize(run, dev_pairs, max_length)
    scores = []

    def after_step(step, model, _loss):
        if step % steps_per_epoch == 0:
            scores.append(dev_score(task, predict(model, dev), dev_labels))
            print(f"epoch {len(scores)}: dev {scores[-1]['main']:.4f}", file=sys.stderr)

    torch.manual_seed(seed)
    _, losses, _, _, _ = replay(run, dropout=True, after_step=after_step)
    records = [
        json.loads(line)["record"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"type":"epoch"' in line
    ]
    return {
        "task": task,
        "steps": len(losses),
        "pytorch_dev": [s["main"] for s in scores],
        "qpeft_dev": [r["main"] for r in records],
        "pytorch_dev_metrics": scores[-1],
        "qpeft_dev_metrics": records[-1]["metrics"],
        "pytorch_train_loss": [
            float(np.mean(losses[e * steps_per_epoch : (e + 1) * steps_per_epoch])) for e in range(epochs)
        ],
        "qpeft_train_loss": [r["train_loss"] for r in records],
        "pytorch_step_losses": losses,
        "qpeft_step_losses": [step["loss"] for step in trace["steps"]],
    }


def checkpoint_tensors(path: Path) -> dict:
    """A qpeft checkpoint's trainable tensors (Burn's module names, linear weights `[in, out]`)
    under the dump's names and PyTorch's `[out, in]`."""
    out = {}
    for name, value in load_tensors(path).items():
        if name.startswith("head.Bert."):
            name = name[len("head.Bert.") :]
            name = name if name.startswith("classifier.") else "bert." + name
        else:
            name = "bert." + (
                name.replace("encoder.layers.", "encoder.layer.")
                .replace(".self_attention.", ".self.")
                .replace(".Adapted.lora_a", ".lora_A.weight")
                .replace(".Adapted.lora_b", ".lora_B.weight")
            )
        out[name] = value.T if value.ndim == 2 else value
    return out


def mean_se(values) -> list:
    """[mean, standard error of the mean]."""
    v = np.asarray(values, dtype=np.float64)
    return [float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))]


def set_parameters(loaded: dict, run: Path, epoch: int, initial: dict):
    """Loads the trainable tensors a run had at the start of epoch `epoch` + 1 (0: the dump's
    initial tensors, else the epoch-`epoch` checkpoint) into `loaded`; returns them."""
    if epoch == 0:
        params = initial
    else:
        path = run / "checkpoints" / f"epoch-{epoch}" / "trainable.safetensors"
        params = checkpoint_tensors(path)
        if set(params) != set(loaded):
            raise SystemExit(
                f"{path}: its tensors do not map onto the model's trainable ones "
                "(a BERT head and LoRA adapters are read)"
            )
    with torch.no_grad():
        for name, p in loaded.items():
            p.copy_(torch.from_numpy(params[name].copy()))
    return params


def fixed_params(run: Path, frozen: Path, epoch: int, draws: int, seed: int) -> dict:
    """Dropout at fixed parameters: `frozen` is `run` resumed from its epoch-`epoch` checkpoint
    at a learning rate of 1e-30 with every step logged (scripts/check_dropout.sh), so each of its
    losses in epoch `epoch`+1 is one of qpeft's dropout draws at that checkpoint's parameters.
    Here the same parameters see the same dumped batches with `draws` PyTorch masks per step and
    once without dropout."""
    trace = json.loads((run / "dump" / "trace.json").read_text())
    recipe = trace["recipe"]
    steps_per_epoch = trace["total_steps"] // recipe["train"]["epochs"]
    frozen_recipe = tomllib.loads((frozen / "recipe.toml").read_text())["train"]
    if frozen_recipe["learning_rate"] > 1e-20 or frozen_recipe["log_every"] != 1:
        raise SystemExit(f"{frozen}/recipe.toml: needs learning_rate ≤ 1e-20 and log_every = 1")
    events = [json.loads(line) for line in (frozen / "metrics.jsonl").read_text().splitlines()]
    resumed = max(i for i, e in enumerate(events) if e["type"] == "resume")
    qpeft = {e["step"]: (e["loss"], e["grad_norm"]) for e in events[resumed:] if e["type"] == "step"}
    steps = [
        step for step in trace["steps"]
        if epoch * steps_per_epoch < step["step"] <= (epoch + 1) * steps_per_epoch
    ]
    missing = [step["step"] for step in steps if step["step"] not in qpeft]
    if missing:
        raise SystemExit(f"{frozen}/metrics.jsonl lacks {len(missing)} steps (first {missing[0]})")
    initial = load_tensors(run / "dump" / "initial.safetensors")
    model, loaded, _ = build(run, recipe, initial, dropout=True)
    params = set_parameters(loaded, run, epoch, initial)
    moved = checkpoint_tensors(frozen / "checkpoints" / f"epoch-{epoch + 1}" / "trainable.safetensors")
    batches = load_tensors(run / "dump" / "batches.safetensors")
    torch.manual_seed(seed)
    ours, theirs, clean, our_norms, their_norms = [], [], [], [], []
    for step in steps:
        model.train()
        # The first draw also backpropagates: the gradient norm under dropout, as qpeft logs it
        # (all trainable tensors, summed over the step's passes, before clipping).
        model.zero_grad(set_to_none=True)
        draw = [step_loss(model, batches, step, backward=True)]
        their_norms.append(float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in loaded.values()))))
        with torch.no_grad():
            draw += [step_loss(model, batches, step) for _ in range(draws - 1)]
            model.eval()
            clean.append(step_loss(model, batches, step))
        theirs.append(draw)
        loss, norm = qpeft[step["step"]]
        ours.append(loss)
        our_norms.append(norm)
    ours, theirs, clean = np.array(ours), np.array(theirs), np.array(clean)
    our_norms, their_norms = np.array(our_norms), np.array(their_norms)
    their_mean = theirs.mean(axis=1)
    return {
        "steps": len(steps),
        "draws": draws,
        "parameters_moved": max(float(np.abs(moved[n] - params[n]).max()) for n in params),
        # mean ± standard error over the steps
        "qpeft_loss": mean_se(ours),
        "pytorch_loss": mean_se(their_mean),
        "no_dropout_loss": mean_se(clean),
        "qpeft_minus_pytorch": mean_se(ours - their_mean),
        "qpeft_minus_no_dropout": mean_se(ours - clean),
        "pytorch_minus_no_dropout": mean_se(their_mean - clean),
        # one draw's spread around the no-dropout loss: qpeft's and each PyTorch draw's
        "qpeft_draw_std": float(np.std(ours - clean, ddof=1)),
        "pytorch_draw_std": [float(np.std(theirs[:, d] - clean, ddof=1)) for d in range(draws)],
        # PyTorch against itself: its first draw against the mean of its others
        "pytorch_draw0_minus_rest": mean_se(theirs[:, 0] - theirs[:, 1:].mean(axis=1)) if draws > 1 else None,
        # one draw each per step
        "qpeft_grad_norm": mean_se(our_norms),
        "pytorch_grad_norm": mean_se(their_norms),
        "qpeft_minus_pytorch_grad_norm": mean_se(our_norms - their_norms),
        "qpeft_step_losses": ours.tolist(),
        "pytorch_step_losses": theirs.tolist(),
        "no_dropout_step_losses": clean.tolist(),
        "qpeft_grad_norms": our_norms.tolist(),
        "pytorch_grad_norms": their_norms.tolist(),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def gradient_draws(run: Path, draws: int, seed: int) -> list:
    """The direction of the gradient under dropout: at every dumped step whose starting
    parameters are on disk (step 1: the dump's initial tensors; each epoch's first step: the
    previous epoch's checkpoint), PyTorch draws `draws` dropout gradients on the same batch and
    one without dropout; qpeft's one dumped draw is set among them by its cosine to the mean of
    PyTorch's others (each PyTorch draw: to the mean of the others)."""
    trace = json.loads((run / "dump" / "trace.json").read_text())
    recipe = trace["recipe"]
    steps_per_epoch = trace["total_steps"] // recipe["train"]["epochs"]
    steps = {step["step"]: step for step in trace["steps"]}
    initial = load_tensors(run / "dump" / "initial.safetensors")
    model, loaded, _ = build(run, recipe, initial, dropout=True)
    names = sorted(loaded)
    batches = load_tensors(run / "dump" / "batches.safetensors")
    torch.manual_seed(seed)
    out = []
    with safe_open(str(run / "dump" / "gradients.safetensors"), framework="np") as dumped:
        stored = set(dumped.keys())
        for step in sorted(steps):
            if (step - 1) % steps_per_epoch or f"step-{step}.{names[0]}" not in stored:
                continue
            set_parameters(loaded, run, (step - 1) // steps_per_epoch, initial)

            def gradient(train: bool) -> np.ndarray:
                model.train(train)
                model.zero_grad(set_to_none=True)
                step_loss(model, batches, steps[step], backward=True)
                return np.concatenate([loaded[n].grad.numpy().ravel() for n in names]).astype(np.float64)

            theirs = np.stack([gradient(True) for _ in range(draws)])
            clean = gradient(False)
            ours = np.concatenate([dumped.get_tensor(f"step-{step}.{n}").ravel() for n in names]).astype(np.float64)
            # Each PyTorch draw against the mean of the other K − 1; qpeft's against the same K
            # means of K − 1 (averaged), so that both see means of as many draws.
            total = theirs.sum(axis=0)
            means = [(total - theirs[j]) / (draws - 1) for j in range(draws)]
            others = [cosine(theirs[j], means[j]) for j in range(draws)]
            ours_cos = float(np.mean([cosine(ours, m) for m in means]))
            out.append({
                "step": step,
                "qpeft_cos_to_pytorch_mean": ours_cos,
                "pytorch_cos_to_others": others,
                # where qpeft's draw ranks among PyTorch's (0: below every one, `draws`: above)
                "qpeft_rank": int(sum(c < ours_cos for c in others)),
                "qpeft_cos_to_no_dropout": cosine(ours, clean),
                "pytorch_cos_to_no_dropout": [cosine(t, clean) for t in theirs],
                "qpeft_norm": float(np.linalg.norm(ours)),
                "pytorch_norms": [float(np.linalg.norm(t)) for t in theirs],
                "no_dropout_norm": float(np.linalg.norm(clean)),
            })
            print(f"step {step}: qpeft's cosine {out[-1]['qpeft_cos_to_pytorch_mean']:.3f}, rank "
                  f"{out[-1]['qpeft_rank']} of {draws}", file=sys.stderr)
    return out


def max_relative(ours: dict, reference: dict) -> tuple:
    """The largest per-tensor max|a − b| / max|b|, and that tensor's name."""
    errors = {}
    for name, ref in reference.items():
        a = ours[name].astype(np.float64)
        assert a.shape == ref.shape, f"{name}: {a.shape} vs {ref.shape}"
        errors[name] = float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-12))
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run directory made with --dump-batches")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--float64",
        action="store_true",
        help="also replay in float64 and report how far each f32 implementation is from it",
    )
    parser.add_argument("--write-expected", type=Path)
    parser.add_argument(
        "--dev",
        action="store_true",
        help="train every dumped step with dropout on (each side its own masks) and score the dev "
        "set after every epoch, beside qpeft's dev scores; MRPC and STS-B runs",
    )
    parser.add_argument("--glue-dir", type=Path, default=Path(os.environ.get("GLUE_DIR", "datasets/glue")))
    parser.add_argument(
        "--fixed-params",
        type=Path,
        metavar="FROZEN",
        help="dropout at fixed parameters: FROZEN is RUN resumed from --epoch's checkpoint at lr 1e-30 "
        "(scripts/check_dropout.sh); compares its per-step losses with --draws PyTorch draws",
    )
    parser.add_argument("--epoch", type=int, default=1, help="the checkpoint --fixed-params starts from")
    parser.add_argument("--draws", type=int, default=4, help="PyTorch's dropout draws per step (--fixed-params)")
    parser.add_argument(
        "--gradient-draws",
        type=int,
        metavar="K",
        help="the gradient's direction under dropout: at each dumped step whose starting parameters "
        "are on disk (step 1, each epoch's first), qpeft's dumped gradient among K PyTorch draws",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="torch's seed (dropout draws) with --dev, --fixed-params, --gradient-draws"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch's threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gradient_draws:
        print(json.dumps(gradient_draws(args.run, args.gradient_draws, args.seed), indent=2))
        return
    if args.fixed_params:
        print(json.dumps(fixed_params(args.run, args.fixed_params, args.epoch, args.draws, args.seed), indent=2))
        return
    if args.dev:
        print(json.dumps(replay_epochs(args.run, args.glue_dir, args.seed), indent=2))
        return
    torch.manual_seed(0)
    trace, losses, lrs, final, grads = replay(args.run)
    theirs = load_tensors(args.run / "dump" / "final.safetensors")
    their_grads = load_tensors(args.run / "dump" / "gradients.safetensors")

    def step_grads(step: int) -> dict:
        prefix = f"step-{step}."
        return {k[len(prefix) :]: v for k, v in their_grads.items() if k.startswith(prefix)}

    loss_err = [
        abs(ours - step["loss"]) / max(abs(step["loss"]), 1e-12)
        for ours, step in zip(losses, trace["steps"])
    ]
    lr_err = max(
        abs(a - s["learning_rate"]) / max(s["learning_rate"], 1e-300)
        for a, s in zip(lrs, trace["steps"])
    )
    tensor_err, worst = max_relative(theirs, final)
    summary = {
        "steps": len(losses),
        "pytorch_losses": losses,
        "qpeft_losses": [s["loss"] for s in trace["steps"]],
        "max_loss_rel_err": max(loss_err),
        "max_lr_rel_err": lr_err,
        "max_tensor_rel_err": tensor_err,
        "worst_tensor": worst,
        # The first step's gradients: both sides start from the same parameters.
        "step1_grad_rel_err": max_relative(step_grads(1), grads[0]),
        "tolerance": args.tolerance,
    }
    if args.float64:
        _, _, _, exact, exact_grads = replay(args.run, torch.float64)
        summary["pytorch_f32_to_f64"] = max_relative(final, exact)
        summary["qpeft_f32_to_f64"] = max_relative(theirs, exact)
        summary["step1_grad_pytorch_f32_to_f64"] = max_relative(grads[0], exact_grads[0])
        summary["step1_grad_qpeft_f32_to_f64"] = max_relative(step_grads(1), exact_grads[0])
    ok = (
        max(loss_err) <= args.tolerance
        and tensor_err <= args.tolerance
        and summary["step1_grad_rel_err"][0] <= args.tolerance
        and lr_err <= 1e-9
    )
    summary["agree"] = ok
    print(json.dumps(summary, indent=2))
    if args.write_expected:
        tensors = {f"final.{n}": v for n, v in final.items()}
        tensors.update({f"grad1.{n}": v for n, v in grads[0].items()})
        tensors["losses"] = np.array(losses, dtype=np.float64)
        save_file(tensors, str(args.write_expected))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
