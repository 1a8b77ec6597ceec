"""What users run today for the end-to-end benchmark (bench/e2e.py): Hugging Face `Trainer` with
a `peft` LoRA over all-MiniLM-L6-v2 whose six target linears per layer are fake-quantized to
MXINT (bench/reference.py's `mxint_fake_quantize`, docs/algorithms.md §1.6) and frozen.

The same protocol as `qpeft train recipes/stsb.toml --set adapter.init=qlora`: LoRA rank 8,
alpha 16, dropout 0.1 on the adapter input, B = 0; pooler and regression head trainable;
AdamW (weight decay 0, no clipping), cosine schedule without warmup, dropout on; STS-B
regression (MSE), dev Pearson/Spearman after every epoch. Timed from process start to the
last dev score; prints one JSON object.
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


def metrics(prediction):
    predicted = np.asarray(prediction.predictions).reshape(-1)
    gold = np.asarray(prediction.label_ids).reshape(-1)
    pearson = float(np.corrcoef(predicted, gold)[0, 1])
    spearman = float(np.corrcoef(ranks(predicted), ranks(gold))[0, 1])
    return {"pearson": pearson, "spearman": spearman}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = BertForSequenceClassification.from_pretrained(MODEL, num_labels=1)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for name in TARGETS:
                linear = layer.get_submodule(name)
                linear.weight.copy_(mxint_fake_quantize(linear.weight, args.bits))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, bias="none",
                        target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)$",
                        modules_to_save=["classifier", "pooler"])
    model = get_peft_model(model, config)

    glue = Path(args.glue_dir) / "STS-B"
    train_rows = read_stsb(glue / "train.tsv")
    if args.max_train_samples:
        picked = np.random.default_rng(args.seed).permutation(len(train_rows))
        train_rows = [train_rows[i] for i in picked[:args.max_train_samples]]
    dev_rows = read_stsb(glue / "dev.tsv")

    def encode(rows):
        encoded = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True,
                            max_length=args.max_length)
        return [{"input_ids": encoded["input_ids"][i],
                 "token_type_ids": encoded["token_type_ids"][i],
                 "attention_mask": encoded["attention_mask"][i],
                 "labels": float(rows[i][2])} for i in range(len(rows))]

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
                      compute_metrics=metrics)
    trainer.train()
    history = [e for e in trainer.state.log_history if "eval_pearson" in e]
    final = history[-1]
    print(json.dumps({
        "implementation": "hf-trainer-peft",
        "wall_seconds": time.monotonic() - START,
        "train_examples": len(train),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs": args.epochs,
        "dev_per_epoch": [100 * (e["eval_pearson"] + e["eval_spearman"]) / 2 for e in history],
        "dev_score": 100 * (final["eval_pearson"] + final["eval_spearman"]) / 2,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
