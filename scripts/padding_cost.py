#!/usr/bin/env python3
"""How much padding each training-batch order costs on a GLUE training split (docs/results.md).

Tokenizes the split as qpeft does (the model's tokenizer.json, pairs truncated to --max-length),
then, over 5 shuffles, forms batches of --batch-size the way each `train.length_group_window` /
`train.length_split` setting does and prints the padded tokens (what the linear layers compute)
and the padded attention cells (batch · len², what attention computes), each relative to the
unpadded total.

usage: python scripts/padding_cost.py MODEL_DIR datasets/glue/STS-B/train.tsv 7 8 [--batch-size 64]
(the two numbers are the sentence columns; STS-B: 7 8, MRPC: 3 4, RTE: 1 2)
"""

import argparse
import random

from tokenizers import Tokenizer


def batches(order, lengths, batch_size, window, split):
    out = []
    for start in range(0, len(order), window * batch_size):
        chunk = order[start : start + window * batch_size]
        if window > 1:
            chunk = sorted(chunk, key=lambda i: -lengths[i])
        out += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    parts = []
    for batch in out:
        batch = sorted(batch, key=lambda i: -lengths[i])
        size = -(-len(batch) // split)
        parts += [batch[k : k + size] for k in range(0, len(batch), size)]
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("tsv")
    parser.add_argument("columns", type=int, nargs=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.enable_truncation(args.max_length)
    with open(args.tsv, encoding="utf-8-sig") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    a, b = args.columns
    lengths = [len(e.ids) for e in tokenizer.encode_batch([(r[a], r[b]) for r in rows])]
    real = sum(lengths)
    real_cells = sum(n * n for n in lengths)
    print(f"{len(lengths)} examples, mean length {real / len(lengths):.1f}, max {max(lengths)}")
    print("| window | split | padded tokens / real | padded attention cells / real |")
    print("|---|---|---|---|")
    for window, split in [(50, 1), (10, 1), (5, 1), (1, 1), (1, 4), (1, 8)]:
        rng = random.Random(0)
        tokens = cells = 0
        for _ in range(5):
            order = list(range(len(lengths)))
            rng.shuffle(order)
            for batch in batches(order, lengths, args.batch_size, window, split):
                longest = max(lengths[i] for i in batch)
                tokens += len(batch) * longest
                cells += len(batch) * longest**2
        print(f"| {window} | {split} | {tokens / 5 / real:.2f} | {cells / 5 / real_cells:.2f} |")


if __name__ == "__main__":
    main()
