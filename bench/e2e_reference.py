"""What users run today for the end-to-end benchmark (bench/e2e.py): Hugging Face `Trainer` with
a `peft` LoRA over all-MiniLM-L6-v2 whose six target linears per layer are fake-quantized to
MXINT (bench/reference.py's `mxint_fake_quantize`, docs/algorithms.md §1.6) and frozen.

The same protocol as `qpeft train recipes/stsb.toml --set adapter.init=qlora`: LoRA rank 8,
alpha 16, dropout 0.1 on the adapter input, B = 0; pooler and regression head trainable;
AdamW (weight decay 0, no clipping), cosine schedule without warmup, dropout on; STS-B
regression (MSE), dev Pearson/Spearman after every epoch. Timed from process start to the
last dev score; prints one JSON object.

`--task mrpc|cola` runs the same protocol on a classification task (cross-entropy; main score
as qpeft's: MRPC the mean of accuracy and F1, CoLA Matthews correlation), and `--bits 0` leaves
the base in full precision (LoRA): an independent implementation of qpeft's QLoRA and LoRA rows
(docs/results.md, issue #16).
"""

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

START = time.monotonic()
# Before transformers is imported: huggingface_hub reads it once, at import time (set later, a
# standalone run spent minutes retrying the unreachable hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding,
                          Trainer, TrainingArguments)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import TARGETS, mxint_fake_quantize  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def read_stsb(path: Path):
    """glue_data's STS-B TSV: sentence1, sentence2, score (columns 7, 8, 9)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    a, b, s = header.index("sentence1"), header.index("sentence2"), header.index("score")
    return [(r[a], r[b], float(r[s])) for r in body]


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    result = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        result[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return result


def read_mrpc(path: Path):
    """glue_data's MRPC TSV: Quality, #1 ID, #2 ID, #1 String, #2 String."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[3], r[4], int(r[0])) for r in rows[1:]]


def read_cola(path: Path):
    """glue_data's CoLA train/dev TSV, no header: source, label, original label, sentence."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[3], None, int(r[1])) for r in rows]


TASKS = {  # folder, reader, labels
    "stsb": ("STS-B", read_stsb, 1),
    "mrpc": ("MRPC", read_mrpc, 2),
    "cola": ("CoLA", read_cola, 2),
}


def stsb_metrics(prediction):
    predicted = np.asarray(prediction.predictions).reshape(-1)
    gold = np.asarray(prediction.label_ids).reshape(-1)
    pearson = float(np.corrcoef(predicted, gold)[0, 1])
    spearman = float(np.corrcoef(ranks(predicted), ranks(gold))[0, 1])
    return {"pearson": pearson, "spearman": spearman, "main": (pearson + spearman) / 2}


def classification_metrics(task):
    def metrics(prediction):
        predicted = np.asarray(prediction.predictions).argmax(axis=1)
        gold = np.asarray(prediction.label_ids).reshape(-1)
        tp = float(np.sum((predicted == 1) & (gold == 1)))
        fp = float(np.sum((predicted == 1) & (gold == 0)))
        fn = float(np.sum((predicted == 0) & (gold == 1)))
        tn = float(np.sum((predicted == 0) & (gold == 0)))
        accuracy = (tp + tn) / len(gold)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = (tp * tn - fp * fn) / denominator if denominator else 0.0
        main = (accuracy + f1) / 2 if task == "mrpc" else mcc
        return {"accuracy": accuracy, "f1": f1, "mcc": mcc, "main": main}
    return metrics


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--task", choices=sorted(TASKS), default="stsb")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--bits", type=int, default=2, help="MXINT bits of the base; 0: full precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    folder, read, labels = TASKS[args.task]
    model = BertForSequenceClassification.from_pretrained(MODEL, num_labels=labels)
    with torch.no_grad():
        for layer in model.bert.encoder.layer if args.bits else []:
            for name in TARGETS:
                linear = layer.get_submodule(name)
                linear.weight.copy_(mxint_fake_quantize(linear.weight, args.bits))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, bias="none",
                        target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)$",
                        modules_to_save=["classifier", "pooler"])
    model = get_peft_model(model, config)

    glue = Path(args.glue_dir) / folder
    train_rows = read(glue / "train.tsv")
    if args.max_train_samples:
        picked = np.random.default_rng(args.seed).permutation(len(train_rows))
        train_rows = [train_rows[i] for i in picked[:args.max_train_samples]]
    dev_rows = read(glue / "dev.tsv")

    def encode(rows):
        second = [r[1] for r in rows] if rows[0][1] is not None else None
        encoded = tokenizer([r[0] for r in rows], second, truncation=True,
                            max_length=args.max_length)
        return [{"input_ids": encoded["input_ids"][i],
                 "token_type_ids": encoded["token_type_ids"][i],
                 "attention_mask": encoded["attention_mask"][i],
                 "labels": float(rows[i][2]) if labels == 1 else rows[i][2]}
                for i in range(len(rows))]

    train, dev = encode(train_rows), encode(dev_rows)
    training = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, num_train_epochs=args.epochs,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, eval_strategy="epoch", save_strategy="no",
        logging_strategy="no", report_to=[], use_cpu=True, seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=stsb_metrics if labels == 1
                      else classification_metrics(args.task))
    trainer.train()
    history = [e for e in trainer.state.log_history if "eval_main" in e]
    final = history[-1]
    print(json.dumps({
        "implementation": "hf-trainer-peft",
        "wall_seconds": time.monotonic() - START,
        "train_examples": len(train),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": args.epochs,
        "task": args.task,
        "bits": args.bits,
        "seed": args.seed,
        "dev_per_epoch": [100 * e["eval_main"] for e in history],
        "dev_score": 100 * final["eval_main"],
        "dev_final": {k[len("eval_"):]: v for k, v in final.items()
                      if k in ("eval_accuracy", "eval_f1", "eval_mcc", "eval_pearson",
                               "eval_spearman")},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
