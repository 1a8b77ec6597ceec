#!/usr/bin/env python3
"""What each max length cuts on the GLUE tasks (docs/results.md, "Max length: what it cuts").

Tokenizes every train and dev example of each task as qpeft does (the model's tokenizer.json,
[CLS] a [SEP] b [SEP] for pairs), without truncation, and prints the length distribution and
how many examples are longer than each --lengths value (those lose tokens at that
`train.max_length`; batches pad to their longest example, so a max length above a task's longest
example changes nothing).

usage: python scripts/truncation.py MODEL_DIR GLUE_DIR [--lengths 64,128,256]
"""

import argparse
import statistics

from tokenizers import Tokenizer

# task folder: (header row?, the text columns of train.tsv/dev.tsv in the glue_data layout)
TASKS = {
    "RTE": (True, (1, 2)),
    "MRPC": (True, (3, 4)),
    "STS-B": (True, (7, 8)),
    "CoLA": (False, (3,)),
    "SST-2": (True, (0,)),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("glue")
    parser.add_argument("--lengths", default="64,128,256")
    args = parser.parse_args()
    limits = [int(x) for x in args.lengths.split(",")]
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    cut = " | ".join(f"> {n}" for n in limits)
    print(f"| task | split | examples | mean | median | 95th pct | longest | {cut} |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(limits))
    for task, (header, columns) in TASKS.items():
        for split in ("train", "dev"):
            with open(f"{args.glue}/{task}/{split}.tsv", encoding="utf-8-sig") as f:
                rows = [line.rstrip("\n").split("\t") for line in f][1 if header else 0 :]
            texts = [tuple(r[c] for c in columns) for r in rows]
            encoded = tokenizer.encode_batch([t if len(t) == 2 else t[0] for t in texts])
            lengths = sorted(len(e.ids) for e in encoded)
            n = len(lengths)
            longer = [sum(x > m for x in lengths) for m in limits]
            over = " | ".join(f"{c} ({100 * c / n:.1f}%)" for c in longer)
            print(
                f"| {task} | {split} | {n} | {statistics.mean(lengths):.1f} | {lengths[n // 2]} | "
                f"{lengths[int(0.95 * n)]} | {lengths[-1]} | {over} |"
            )


if __name__ == "__main__":
    main()
