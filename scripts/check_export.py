"""Scores a folder written by `qpeft export` with transformers on a GLUE dev split, so the
exported model can be compared with the run's own metric (`qpeft eval RUN`).

A dense export (`--format dense`) loads with transformers alone; a PEFT export (`--format peft`,
recognised by its adapter_config.json) loads as PEFT users load one: the base model from
EXPORT_DIR/base with transformers, then `PeftModel.from_pretrained(base, EXPORT_DIR)`.

usage: python scripts/check_export.py EXPORT_DIR --task sst2 --glue datasets/glue --max-length 64
Tasks: sst2, rte, mrpc (classification, labelled dev files). Prints accuracy, and F1 of the
positive class for MRPC. Needs the bench environment (bench/requirements.txt; peft for PEFT
exports).
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
    # utf-8-sig: MRPC's files open with a byte-order mark.
    with open(Path(args.glue) / folder / "dev.tsv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    label_of = {"entailment": 0, "not_entailment": 1} if args.task == "rte" else None

    export = Path(args.export)
    if (export / "adapter_config.json").is_file():
        from peft import PeftModel

        base = BertForSequenceClassification.from_pretrained(export / "base")
        model = PeftModel.from_pretrained(base, export).eval()
        tokenizer_file = export / "base" / "tokenizer.json"
    else:
        model = BertForSequenceClassification.from_pretrained(export).eval()
        tokenizer_file = export / "tokenizer.json"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    correct, true_positive, predicted_positive, gold_positive = 0, 0, 0, 0
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            texts = [[r[c] for c in columns] for r in chunk]
            # A tokenizer built from tokenizer.json alone leaves token types out unless asked;
            # a pair's second sentence needs type 1.
            encoded = tokenizer(*zip(*texts), truncation=True, max_length=args.max_length,
                                padding=True, return_token_type_ids=True, return_tensors="pt")
            predicted = model(**encoded).logits.argmax(-1).tolist()
            for row, p in zip(chunk, predicted):
                gold = label_of[row[label_column]] if label_of else int(row[label_column])
                correct += int(p == gold)
                true_positive += int(p == 1 and gold == 1)
                predicted_positive += int(p == 1)
                gold_positive += int(gold == 1)
    line = f"{args.task} dev accuracy {correct / len(rows):.4f} ({correct}/{len(rows)})"
    if args.task == "mrpc":
        f1 = 2 * true_positive / max(predicted_positive + gold_positive, 1)
        line += f", f1 {f1:.4f}"
    print(line)


if __name__ == "__main__":
    main()
