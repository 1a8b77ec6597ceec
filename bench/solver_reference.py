"""PyTorch reference for `qpeft bench solver`: IST-DASLab/gptq's `GPTQ.fasterquant` loop
(per-row asymmetric min-max grid, act-order, lazy batches of `--block` columns, 1% damping),
and greedy CoreQ with the alternating α (docs/algorithms.md §7.1-7.3: GPTQ on the shifted target
W_ref = W + α(WD)H_λ⁻¹ with grids fitted on W_ref, then α* of that rounding, one re-round kept
if the symmetric objective fell), on a synthetic layer shaped like qpeft's (uniform W;
H = X·Xᵀ/N from correlated inputs with unequal column scales; D from inputs perturbed by 10%).
Times the solver only (H and D given), `--repeats` times; prints one JSON line.
"""

import argparse
import json
import time

import torch


def synthetic_layer(rows, cols, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(rows, cols, generator=g, dtype=torch.float64) * 2 - 1
    tokens = 2 * cols
    scales = torch.rand(cols, 1, generator=g, dtype=torch.float64) * 2.8 + 0.2
    x = (torch.rand(cols, tokens, generator=g, dtype=torch.float64) * 2 - 1) * scales
    for i in range(cols - 1, 0, -1):
        x[i] += 0.5 * x[i - 1]
    noise = (torch.rand(cols, tokens, generator=g, dtype=torch.float64) * 2 - 1) * 0.1 * scales
    h = x @ x.T / tokens
    d = noise @ x.T / tokens
    return w.to(dtype), h.to(dtype), d.to(dtype)


def find_params(w, bits):
    """quant.py Quantizer.find_params(weight=True, perchannel=True, sym=False)."""
    maxq = 2**bits - 1
    xmin = torch.clamp(w.min(dim=1).values, max=0)
    xmax = torch.clamp(w.max(dim=1).values, min=0)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin[both_zero] = -1
    xmax[both_zero] = 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale, zero, maxq


def fasterquant(W, H, bits, blocksize=128, percdamp=0.01, actorder=True):
    W = W.clone()
    H = H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    scale, zero, maxq = find_params(W, bits)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            q = scale * (q - zero)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, torch.argsort(perm)]
    return Q


def coreq(W, H, D, bits, blocksize=128, percdamp=0.01, alpha=0.25):
    """Greedy CoreQ, alternating α (§7.3 (d))."""
    n = H.shape[0]
    H_damped = H + percdamp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype)
    factor = torch.linalg.cholesky(H_damped)
    WD = W @ D
    shift = torch.cholesky_solve(WD.T, factor).T  # (WD)·H_λ⁻¹

    def objective(Q):
        E = W - Q
        return torch.sum((E @ H) * E)

    Q = fasterquant(W + alpha * shift, H, bits, blocksize, percdamp)
    denominator = torch.sum(WD * shift)
    alpha_star = torch.clamp(torch.sum((Q - W) * WD) / denominator, 0, 1)
    Q2 = fasterquant(W + alpha_star * shift, H, bits, blocksize, percdamp)
    return Q2 if objective(Q2) < objective(Q) else Q


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("gptq", "coreq"), default="gptq")
    parser.add_argument("--rows", type=int, default=3072)
    parser.add_argument("--cols", type=int, default=768)
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("f32", "f64"), default="f32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.precision == "f32" else torch.float64
    w, h, d = synthetic_layer(args.rows, args.cols, args.seed, dtype)
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        if args.method == "gptq":
            fasterquant(w, h, args.bits, args.block)
        else:
            coreq(w, h, d, args.bits, args.block)
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"implementation": "pytorch", "method": args.method, "rows": args.rows,
                      "cols": args.cols, "bits": args.bits, "block": args.block,
                      "precision": args.precision, "threads": args.threads,
                      "seconds": seconds}))


if __name__ == "__main__":
    main()
