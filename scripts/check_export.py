"""Scores a folder written by `qpeft export` with transformers on a GLUE dev split, so the
merged model can be compared with the run's own metric (`qpeft eval RUN`).

usage: python scripts/check_export.py EXPORT_DIR --task sst2 --glue datasets/glue --max-length 64
Tasks: sst2, rte, mrpc (classification, labelled dev files).
"""

import argparse
import csv
from pathlib import Path

import torch
from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

# task -> (folder, text columns, label column) of glue_data's dev.tsv
TASKS = {
    "sst2": ("SST-2", ["sentence"], "label"),
    "rte": ("RTE", ["sentence1", "sentence2"], "label"),
    "mrpc": ("MRPC", ["#1 String", "#2 String"], "Quality"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--task", default="sst2", choices=["sst2", "rte", "mrpc"])
    parser.add_argument("--glue", default="datasets/glue")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    folder, columns, label_column = TASKS[args.task]
    with open(Path(args.glue) / folder / "dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    label_of = {"entailment": 0, "not_entailment": 1} if args.task == "rte" else None

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.export) / "tokenizer.json"))
    model = BertForSequenceClassification.from_pretrained(args.export).eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            texts = [[r[c] for c in columns] for r in chunk]
            encoded = tokenizer(*zip(*texts), truncation=True, max_length=args.max_length,
                                padding=True, return_tensors="pt")
            predicted = model(**encoded).logits.argmax(-1).tolist()
            for row, p in zip(chunk, predicted):
                gold = label_of[row[label_column]] if label_of else int(row[label_column])
                correct += int(p == gold)
    print(f"{args.task} dev accuracy {correct / len(rows):.4f} ({correct}/{len(rows)})")


if __name__ == "__main__":
    main()
