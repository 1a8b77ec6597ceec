"""PyTorch reference for `qpeft bench`: the same QPEFT step in the way people run it today.

all-MiniLM-L6-v2 as a transformers BertForSequenceClassification; the six target linears of
every layer (query, key, value, attention output, intermediate, output) get their weights
fake-quantized in fp32 to MXINT (blocks of 32 along the input dimension, one shared
power-of-two exponent per block, docs/algorithms.md §1), frozen, and wrapped PEFT-style with a
trainable LoRA branch (A Kaiming-uniform, B = 0, dropout on its input, scale alpha/rank).
Everything else is frozen except the classifier head and BERT's pooler (as qpeft's recipes). AdamW (torch defaults, weight decay
0.01), global-norm clipping at 1.0, dropout on, synthetic batches of uniform random tokens
with every position attended — the work `qpeft bench` does.

Prints one JSON object like qpeft's: step times, samples/s, peak RSS, checkpoint sizes.
"""

import argparse
import json
import math
import os
import resource
import tempfile
import time

import torch
from torch import nn
from transformers import BertForSequenceClassification

TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def mxint_fake_quantize(weight: torch.Tensor, bits: int, block: int = 32) -> torch.Tensor:
    """MXINT round trip of a [out, in] weight: per block of `block` inputs, scale
    2^(floor(log2 max|w|) - (bits - 2)), magnitudes clamped to 2^(bits-1) - 1 (symmetric)."""
    rows, cols = weight.shape
    assert cols % block == 0
    w = weight.reshape(rows, cols // block, block)
    absmax = w.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    exponent = torch.floor(torch.log2(absmax)) - (bits - 2)
    scale = torch.pow(2.0, exponent)
    qmax = 2 ** (bits - 1) - 1
    codes = torch.clamp(torch.round(w / scale), -qmax, qmax)
    return (codes * scale).reshape(rows, cols)


class LoraLinear(nn.Module):
    """PEFT's LoRA Linear: base(x) + B(A(dropout(x))) * alpha / r, base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


def replace_targets(net, replace):
    """Sets each target linear of every encoder layer to `replace(linear)`."""
    for layer in net.bert.encoder.layer:
        for target in TARGETS:
            parent_path, name = target.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            setattr(parent, name, replace(getattr(parent, name)))


def build_model(model: str, bits: int, rank: int, alpha: float, dropout: float):
    net = BertForSequenceClassification.from_pretrained(model, num_labels=2)
    for p in net.parameters():
        p.requires_grad_(False)

    def adapt(linear):
        with torch.no_grad():
            linear.weight.copy_(mxint_fake_quantize(linear.weight, bits))
        return LoraLinear(linear, rank, alpha, dropout)

    replace_targets(net, adapt)
    # qpeft's recipes train BERT's pooler with the head (docs/algorithms.md §12.1).
    for module in (net.classifier, net.bert.pooler):
        for p in module.parameters():
            p.requires_grad_(True)
    return net


def merge_adapters(net):
    """Replaces every LoraLinear by its base nn.Linear with weight W + s·B·A."""

    def merge(adapted):
        with torch.no_grad():
            adapted.base.weight += adapted.scaling * (adapted.lora_B.weight @ adapted.lora_A.weight)
        return adapted.base

    replace_targets(net, merge)


def synthetic_batch(vocab: int, batch: int, seq_len: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids), labels


def checkpoint_sizes(net, optimizer):
    """Bytes of the full fp32 model file, and of a training checkpoint holding what qpeft's
    holds: the trainable parameters and the optimizer state."""
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "model.pt")
        torch.save(net.state_dict(), full)
        checkpoint = os.path.join(tmp, "checkpoint.pt")
        trainable = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
        state = {"trainable": trainable}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        torch.save(state, checkpoint)
        return os.path.getsize(full), os.path.getsize(checkpoint)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--mode", choices=("train", "eval"), default="train")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--merge", action="store_true",
                        help="eval: merge each adapter into its base weight first (peft's "
                             "merge_and_unload), as qpeft's evaluation does")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = build_model(args.model, args.bits, args.rank, args.alpha, args.dropout)
    ids, mask, types, labels = synthetic_batch(
        net.config.vocab_size, args.batch_size, args.seq_len, args.seed
    )
    trainable = [p for p in net.parameters() if p.requires_grad]
    seconds = []
    optimizer = None
    if args.mode == "train":
        net.train()
        decay = [p for n, p in net.named_parameters() if p.requires_grad and "bias" not in n]
        no_decay = [p for n, p in net.named_parameters() if p.requires_grad and "bias" in n]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.lr,
        )
        for step in range(args.warmup + args.steps):
            started = time.perf_counter()
            out = net(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise SystemExit(f"benchmark step {step}: the loss is {loss}")
            if step >= args.warmup:
                seconds.append(time.perf_counter() - started)
    else:
        net.eval()
        if args.merge:
            merge_adapters(net)
        with torch.inference_mode():
            for step in range(args.warmup + args.steps):
                started = time.perf_counter()
                logits = net(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                if not torch.isfinite(logits).all():
                    raise SystemExit(f"benchmark step {step}: the logits are not finite")
                if step >= args.warmup:
                    seconds.append(time.perf_counter() - started)
    full_bytes, checkpoint_bytes = checkpoint_sizes(net, optimizer)
    print(
        json.dumps(
            {
                "implementation": "pytorch",
                "mode": args.mode,
                "device": "cpu",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "timings": {
                    "batch_size": args.batch_size,
                    "seq_len": args.seq_len,
                    "step_seconds": seconds,
                    "samples_per_second": args.batch_size * len(seconds) / sum(seconds),
                },
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "checkpoint_bytes": checkpoint_bytes if args.mode == "train" else None,
                "model_file_bytes": full_bytes,
            }
        )
    )


if __name__ == "__main__":
    main()
