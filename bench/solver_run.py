"""Side-by-side solver timing: `qpeft bench solver` (float64, faer) vs the PyTorch references
of bench/solver_reference.py (IST-DASLab's `fasterquant` loop; greedy CoreQ with alternating α
built on it) in float32 (what the references run) and float64 (qpeft's precision), same thread
count, on all-MiniLM-L6-v2's layer shapes and on 3072x768 / 768x3072, block 128, 2/3/4 bits.
Prints median seconds and qpeft's speed ratio.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

from run import run_json  # bench/run.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
# [out, in]: MiniLM's attention (q, k, v, output), intermediate and output dense; BERT-base's FFN.
SHAPES = [(384, 384), (1536, 384), (384, 1536), (3072, 768), (768, 3072)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qpeft", default=str(ROOT / "target/release/qpeft"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bits", default="2,3,4")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--methods", default="gptq,coreq")
    args = parser.parse_args()
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               RAYON_NUM_THREADS=threads)
    print(f"Per-row asymmetric grid, act-order, block {args.block}, {args.threads} threads, "
          f"median of {args.repeats} runs per process\n")
    for method in args.methods.split(","):
        table(method, args, env, threads)


def table(method, args, env, threads):
    print(f"\n{method}\n")
    print("| shape [out, in] | bits | qpeft f64 (s) | PyTorch f32 (s) | PyTorch f64 (s) "
          "| speed vs f32 | speed vs f64 |")
    print("|---|---|---|---|---|---|---|")
    totals = {"qpeft": 0.0, "f32": 0.0, "f64": 0.0}
    for rows, cols in SHAPES:
        for bits in args.bits.split(","):
            common = ["--rows", str(rows), "--cols", str(cols), "--bits", bits,
                      "--block", str(args.block), "--repeats", str(args.repeats)]
            runs = [
                ("qpeft", [args.qpeft, "bench", "solver", "--method", method] + common),
                ("f32", [args.python, str(ROOT / "bench/solver_reference.py"), "--method",
                         method, "--threads", threads, "--precision", "f32"] + common),
                ("f64", [args.python, str(ROOT / "bench/solver_reference.py"), "--method",
                         method, "--threads", threads, "--precision", "f64"] + common),
            ]
            median = {}
            for name, command in runs:
                median[name] = statistics.median(run_json(command, env)["seconds"])
                totals[name] += median[name]
            print(f"| {rows}x{cols} | {bits} | {median['qpeft']:.3f} | {median['f32']:.3f} "
                  f"| {median['f64']:.3f} | {median['f32'] / median['qpeft']:.2f}x "
                  f"| {median['f64'] / median['qpeft']:.2f}x |", flush=True)
    print(f"| all | | {totals['qpeft']:.3f} | {totals['f32']:.3f} | {totals['f64']:.3f} "
          f"| {totals['f32'] / totals['qpeft']:.2f}x | {totals['f64'] / totals['qpeft']:.2f}x |")


if __name__ == "__main__":
    main()
