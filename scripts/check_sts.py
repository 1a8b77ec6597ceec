"""Zero-shot STS-B with transformers, as a reference for `qpeft sts`: the cosine of the two
sentences' mean-pooled (or [CLS]), L2-normalized last hidden states, scored with scipy against
the gold similarities; with --compare, the largest per-pair difference from `qpeft sts --json`
(run with the same --pooling).

usage: python scripts/check_sts.py MODEL_DIR [--glue datasets/glue] [--split dev]
                                   [--max-length 128] [--pooling mean|cls]
                                   [--compare qpeft-sts.json]
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from transformers import AutoModel, AutoTokenizer


def embed(model, tokenizer, texts, max_length, pooling, batch_size=64):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1))
    return torch.cat(out).double().numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--glue", default="datasets/glue")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    parser.add_argument("--compare")
    args = parser.parse_args()
    path = Path(args.glue) / "STS-B" / f"{args.split}.tsv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    first = [r["sentence1"] for r in rows]
    second = [r["sentence2"] for r in rows]
    gold = np.array([float(r["score"]) for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    cosines = (embed(model, tokenizer, first, args.max_length, args.pooling)
               * embed(model, tokenizer, second, args.max_length, args.pooling)).sum(1)
    print(f"STS-B {args.split} ({len(rows)} pairs): Spearman {100 * spearmanr(cosines, gold)[0]:.2f}, "
          f"Pearson {100 * pearsonr(cosines, gold)[0]:.2f}")
    if args.compare:
        ours = json.loads(Path(args.compare).read_text())
        diff = np.abs(np.array(ours["cosines"]) - cosines).max()
        print(f"qpeft: Spearman {100 * ours['spearman']:.2f}, Pearson {100 * ours['pearson']:.2f}; "
              f"max |cosine difference| {diff:.2e}")


if __name__ == "__main__":
    main()
