"""End-to-end benchmark: time to fine-tune STS-B with qpeft vs Hugging Face Trainer + peft.

Both fine-tune all-MiniLM-L6-v2 with 2-bit MXINT target linears and a rank-8 LoRA (qpeft:
`qpeft train recipes/stsb.toml --set adapter.init=qlora`; the reference: bench/e2e_reference.py,
the same base fake-quantized and the same hyperparameters), batch 32, max length 128, with a dev
evaluation after every epoch, each as one process from start to the last dev score, 2 threads
each, alternating, `--rounds` times. qpeft's init checkpoint is built (and cached) once before
the timed runs, as a user's second run finds it. Prints wall time, samples/s (training examples
× epochs / wall), peak RSS and the final dev score (mean of Pearson and Spearman, ×100) of
each run, and the medians' ratio.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command, env):
    """Runs `command`; returns (wall seconds, peak RSS bytes of that process, stdout)."""
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, cwd=ROOT)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({status}): {' '.join(map(str, command))}")
    return wall, usage.ru_maxrss * 1024, stdout.decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qpeft", required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "datasets/glue"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train-samples", type=int,
                        help="train on a random subset (default: all 5,749 pairs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="qpeft's --device")
    args = parser.parse_args()

    threads = str(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               RAYON_NUM_THREADS=threads, MATMUL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
    sets = ["adapter.init=qlora", "train.batch_size=32", f"train.epochs={args.epochs}",
            "train.max_length=128", "train.eval_batch_size=128"]
    if args.max_train_samples:
        sets.append(f"data.max_train_samples={args.max_train_samples}")
    qpeft_sets = [word for s in sets for word in ("--set", s)]

    results = {"qpeft": [], "hf-trainer-peft": []}
    with tempfile.TemporaryDirectory() as tmp:
        # The init checkpoint (quantization + adapters) is cached by key; build it untimed
        # (one tiny `qpeft bench` step builds the recipe's model).
        subprocess.run([args.qpeft, "bench", "eval", "recipes/stsb.toml", *qpeft_sets,
                        "--steps", "1", "--warmup", "0", "--batch-size", "1", "--seq-len", "8"],
                       env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        for round_index in range(args.rounds):
            out = Path(tmp) / f"round{round_index}"
            runs = [
                ("qpeft", [args.qpeft, "train", "recipes/stsb.toml", *qpeft_sets,
                           "--data-dir", args.glue_dir, "--device", args.device,
                           "--out", str(out / "qpeft")]),
                ("hf-trainer-peft", [args.python, str(ROOT / "bench/e2e_reference.py"),
                                     "--glue-dir", args.glue_dir, "--epochs", str(args.epochs),
                                     "--threads", threads, "--out", str(out / "hf")]
                 + (["--max-train-samples", str(args.max_train_samples)]
                    if args.max_train_samples else [])),
            ]
            if round_index % 2 == 1:
                runs.reverse()
            for name, command in runs:
                wall, rss, stdout = timed(command, env)
                if name == "qpeft":
                    report = json.loads((out / "qpeft" / "report.json").read_text())
                    examples = report["recipe"]["data"].get("max_train_samples") or 5749
                    dev = [100 * e["main"] for e in report["epochs"]]
                    trainable = report["trainable_parameters"]
                else:
                    reference = json.loads(stdout.strip().splitlines()[-1])
                    examples, dev = reference["train_examples"], reference["dev_per_epoch"]
                    trainable = reference["trainable_parameters"]
                result = {"wall": wall, "rss": rss, "dev": dev, "trainable": trainable,
                          "samples_per_second": examples * args.epochs / wall}
                results[name].append(result)
                print(f"round {round_index + 1} {name}: {wall:.1f} s, "
                      f"{result['samples_per_second']:.2f} samples/s, "
                      f"dev {' / '.join(f'{d:.2f}' for d in dev)}", file=sys.stderr)

    subset = f"{args.max_train_samples} random" if args.max_train_samples else "all 5,749"
    print(f"\nSTS-B, {subset} training pairs, {args.epochs} epochs, batch 32, max length 128, "
          f"dev after every epoch, {args.threads} threads, {args.rounds} rounds\n")
    print("| implementation | wall (s) median | samples/s | speed ratio | peak RSS | "
          "trainable parameters | dev score per epoch (last round) |")
    print("|---|---|---|---|---|---|---|")
    reference_wall = statistics.median(r["wall"] for r in results["hf-trainer-peft"])
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        print(f"| {name} | {wall:.1f} | "
              f"{statistics.median(r['samples_per_second'] for r in runs):.2f} | "
              f"{reference_wall / wall:.2f}x | "
              f"{max(r['rss'] for r in runs) / 2**20:.0f} MiB | {runs[-1]['trainable']:,} | "
              f"{' / '.join(f'{d:.2f}' for d in runs[-1]['dev'])} |")


if __name__ == "__main__":
    main()
