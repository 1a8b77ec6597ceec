"""Side-by-side CPU benchmark: qpeft vs the PyTorch reference (bench/reference.py).

Runs, alternately and `--rounds` times each, qpeft's QPEFT training step and evaluation pass
(`qpeft bench train|eval`) and the same in PyTorch, on the default model at 2-bit MXINT, rank 8, batch 32,
sequence length 128, with the same thread count; prints samples/s (median, min, max over the
rounds), the qpeft/PyTorch ratio, each process's peak resident memory and the sizes on disk of
the saved checkpoint and of the model file. qpeft evaluates with each adapter merged into its
frozen weight; the evaluation is also timed in PyTorch with peft-style merging
(`reference.py --merge`), so that ratio is printed too. `make bench` installs what it needs and
runs this.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_json(command, env):
    """Runs `command`, returns the JSON object on the last line of its standard output."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n):
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qpeft", default=str(ROOT / "target/release/qpeft"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--modes", default="train,eval")
    parser.add_argument("--json-out", help="also write every measurement here")
    parser.add_argument("--device", default="cpu", help="qpeft's --device (cpu, ndarray)")
    parser.add_argument("--embeddings", type=int, default=8,
                        help="bits of qpeft's stored embedding tables (quant.embeddings; 0: f32). "
                             "The timed computation is the same either way: the tables are "
                             "dequantized when the model loads")
    args = parser.parse_args()

    threads = str(args.threads)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               RAYON_NUM_THREADS=threads, MATMUL_NUM_THREADS=threads)
    shape = ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
             "--steps", str(args.steps), "--warmup", str(args.warmup)]
    # The recipe's QLoRA init is the reference's set-up: MXINT-2 RTN base, B = 0, rank 8, α 16.
    qpeft_set = ["recipes/sst2.toml", "--set", "adapter.init=qlora", "--set", "quant.bits=2",
                 "--set", "adapter.rank=8", "--device", args.device] + shape
    if args.embeddings:
        qpeft_set[1:1] = ["--set", f"quant.embeddings={args.embeddings}"]
    torch_base = [args.python, str(ROOT / "bench/reference.py"), "--bits", "2", "--rank", "8",
                  "--threads", threads] + shape

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            for round_index in range(args.rounds):
                checkpoint = []
                if mode == "train" and round_index == 0:
                    checkpoint = ["--checkpoint", os.path.join(tmp, "qpeft-checkpoint")]
                runs = [("qpeft", [args.qpeft, "bench", mode] + qpeft_set + checkpoint),
                        ("pytorch", torch_base + ["--mode", mode])]
                if mode == "eval":
                    runs.append(("pytorch-merged", torch_base + ["--mode", mode, "--merge"]))
                if round_index % 2 == 1:
                    runs.reverse()
                for name, command in runs:
                    result = run_json(command, env)
                    results.setdefault((name, mode), []).append(result)
                    print(f"{mode} round {round_index + 1} {name}: "
                          f"{result['timings']['samples_per_second']:.2f} samples/s",
                          file=sys.stderr)

    print(f"\nbatch {args.batch_size} x {args.seq_len} tokens, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} timed steps ({args.warmup} warm-up)\n")
    print("| mode | implementation | samples/s median | min | max | qpeft ÷ this (median) "
          "| peak RSS | checkpoint | model file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        medians = {}
        names = [name for name in ("qpeft", "pytorch", "pytorch-merged")
                 if (name, mode) in results]
        for name in names:
            rates = [r["timings"]["samples_per_second"] for r in results[(name, mode)]]
            medians[name] = statistics.median(rates)
        for name in names:
            runs = results[(name, mode)]
            rates = [r["timings"]["samples_per_second"] for r in runs]
            ratio = medians["qpeft"] / medians[name]
            checkpoints = [r["checkpoint_bytes"] for r in runs if r.get("checkpoint_bytes")]
            print(f"| {mode} | {name} | {medians[name]:.2f} | {min(rates):.2f} | {max(rates):.2f} "
                  f"| {ratio:.2f}x | {mib(max(r['peak_rss_bytes'] for r in runs))} "
                  f"| {mib(checkpoints[0] if checkpoints else None)} "
                  f"| {mib(runs[0].get('model_file_bytes'))} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(
            {f"{name}/{mode}": runs for (name, mode), runs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
