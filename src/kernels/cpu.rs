//! One-pass CPU kernels of the fused operations on row-major `f32` slices: rows split over
//! rayon's pool, each task's loop compiled for AVX-512, AVX2 and the baseline and picked at run
//! time ([`multiversion!`]). Every reduction has a fixed order (`LANES` partial sums), so the
//! three compilations give the same bits.
//! `exp` and `erf` are branch-free f32 approximations so that the loops vectorize; Burn's
//! ndarray backend computes both through scalar libm calls, erf in f64.

use rayon::prelude::*;

/// Elements per parallel task: small enough to spread a layer's activations over the
/// threads, large enough that scheduling stays invisible.
const CHUNK: usize = 1 << 14;

/// Defines a function whose body is compiled three times (AVX-512, AVX2 + FMA, the baseline),
/// the widest the CPU has chosen at each call. The body is `#[inline(always)]` into each
/// `#[target_feature]` copy, so that its loops are vectorized for those instructions (a closure
/// handed to a dispatcher is compiled for the baseline when the optimizer declines to inline
/// it, which is what happened to these kernels under pulp's `dispatch`).
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has every feature `v4` is compiled with.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has every feature `v3` is compiled with.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// eˣ in f32, relative error below 2.4·10⁻⁷ (Cephes `expf`: x = n·ln 2 + r, |r| ≤ ln2/2, a
/// degree-6 polynomial in r, 2ⁿ from the exponent bits); 0 below −87 (where eˣ leaves the
/// normal range), NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5·2²³: adding it leaves round(x·log₂e) in the mantissa's low bits.
    const SHIFT: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.0, 88.0);
    let shifted = clamped * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = clamped - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let poly =
        (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5)
            * r
            * r
            + r
            + 1.0;
    let exponent = (shifted.to_bits() as i32 - SHIFT.to_bits() as i32 + 127) << 23;
    let value = poly * f32::from_bits(exponent as u32);
    if x < -87.0 { 0.0 } else { value }
}

/// erf(x) in f32 with absolute error below 6·10⁻⁷ (1.5·10⁻⁷ of the formula, the rest f32
/// rounding): Abramowitz & Stegun 7.1.26, the formula PyTorch's vectorized CPU `erf` uses.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

multiversion! {
    fn gelu_chunk(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    fn gelu_backward_chunk(out: &mut [f32], x: &[f32], grad: &[f32]) {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
            let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * v * v) * INV_SQRT_2PI;
            *o = g * (cdf + v * pdf);
        }
    }
}

/// x·(1 + erf(x/√2))/2 elementwise.
pub fn gelu_erf(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| gelu_chunk(out, x));
    out
}

/// grad·(Φ(x) + x·φ(x)) elementwise.
pub fn gelu_erf_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(out, (x, grad))| gelu_backward_chunk(out, x, grad));
    out
}

/// Independent accumulators in the row reductions: they let the loops vectorize (a single
/// running sum is a dependency chain the compiler may not reorder) and keep each partial sum
/// short, which is also more precise.
const LANES: usize = 16;

/// Σ f(a[i], b[i]) over `LANES` partial sums.
#[inline(always)]
fn reduce_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let b_body = &b[..a_body.len()];
    for (a, b) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += f(a, b);
        }
    }
    for (&a, &b) in a_tail.iter().zip(&b[a_body.len()..]) {
        acc[0] += f(a, b);
    }
    acc.iter().sum()
}

/// Σ a[i]·b[i].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    reduce_pairs(a, b, |a, b| a * b)
}

/// Σ a[i].
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    reduce_pairs(a, a, |a, _| a)
}

/// max a[i] (−∞ for an empty slice).
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (body, tail) = a.split_at(a.len() - a.len() % LANES);
    for chunk in body.chunks_exact(LANES) {
        for (acc, &v) in acc.iter_mut().zip(chunk) {
            *acc = if v > *acc { v } else { *acc };
        }
    }
    for &v in tail {
        acc[0] = if v > acc[0] { v } else { acc[0] };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Rows per parallel task for rows of `len` elements.
fn rows_per_task(len: usize) -> usize {
    (CHUNK / len.max(1)).max(1)
}

/// The layout of attention scores `[batch, heads, queries, keys]` as rows of `keys`, and the
/// mask bias `[batch, keys]` that applies to each batch's `heads · queries` rows.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub keys: usize,
    pub rows_per_batch: usize,
}

/// One row of softmax(scores·scale + mask) into `probs`.
#[inline(always)]
fn softmax_row(scores: &[f32], mask: &[f32], scale: f32, probs: &mut [f32]) {
    for ((p, &s), &m) in probs.iter_mut().zip(scores).zip(mask) {
        *p = s * scale + m;
    }
    let max = max(probs);
    for p in probs.iter_mut() {
        *p = exp(*p - max);
    }
    let inv = 1.0 / sum(probs);
    for p in probs.iter_mut() {
        *p *= inv;
    }
}

multiversion! {
    /// Rows of `probs` (and of `dropped` when `keep` is given) from the rows of `scores`, the
    /// first being row `first_row` of the whole tensor.
    fn softmax_rows(
        probs: &mut [f32],
        dropped: &mut [f32],
        scores: &[f32],
        keep: Option<&[f32]>,
        mask: &[f32],
        first_row: usize,
        shape: AttentionShape,
        scale: f32,
    ) {
        let keys = shape.keys;
        for (i, p) in probs.chunks_exact_mut(keys).enumerate() {
            let batch = (first_row + i) / shape.rows_per_batch;
            let row = i * keys..(i + 1) * keys;
            softmax_row(&scores[row.clone()], &mask[batch * keys..][..keys], scale, p);
            if let Some(keep) = keep {
                for ((d, &p), &k) in dropped[row.clone()].iter_mut().zip(p.iter()).zip(&keep[row]) {
                    *d = p * k;
                }
            }
        }
    }
}

/// softmax(scores·scale + mask) over each row of keys; with `keep`, also probs ⊙ keep.
pub fn attention_probs(
    scores: &[f32],
    mask: &[f32],
    shape: AttentionShape,
    scale: f32,
    keep: Option<&[f32]>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let rows_per = rows_per_task(shape.keys);
    let step = rows_per * shape.keys;
    let mut probs = vec![0.0; scores.len()];
    match keep {
        None => {
            probs.par_chunks_mut(step).enumerate().for_each(|(t, p)| {
                let range = t * step..t * step + p.len();
                softmax_rows(
                    p,
                    &mut [],
                    &scores[range],
                    None,
                    mask,
                    t * rows_per,
                    shape,
                    scale,
                )
            });
            (probs, None)
        }
        Some(keep) => {
            let mut dropped = vec![0.0; scores.len()];
            probs
                .par_chunks_mut(step)
                .zip(dropped.par_chunks_mut(step))
                .enumerate()
                .for_each(|(t, (p, d))| {
                    let range = t * step..t * step + p.len();
                    let (s, k) = (&scores[range.clone()], Some(&keep[range]));
                    softmax_rows(p, d, s, k, mask, t * rows_per, shape, scale)
                });
            (probs, Some(dropped))
        }
    }
}

multiversion! {
    fn softmax_backward_rows(
        out: &mut [f32],
        probs: &[f32],
        grad: &[f32],
        keep: Option<&[f32]>,
        keys: usize,
        scale: f32,
    ) {
        for (i, o) in out.chunks_exact_mut(keys).enumerate() {
            let row = i * keys..(i + 1) * keys;
            let p = &probs[row.clone()];
            // o holds g ⊙ keep until the dot product is known.
            match keep {
                Some(keep) => {
                    for ((o, &g), &k) in o.iter_mut().zip(&grad[row.clone()]).zip(&keep[row]) {
                        *o = g * k;
                    }
                }
                None => o.copy_from_slice(&grad[row]),
            }
            let dot = dot(o, p);
            for (o, &p) in o.iter_mut().zip(p) {
                *o = scale * p * (*o - dot);
            }
        }
    }
}

/// d scores = scale · p ⊙ (g − Σ g ⊙ p) per row, g = grad ⊙ keep.
pub fn attention_probs_backward(
    probs: &[f32],
    keep: Option<&[f32]>,
    grad: &[f32],
    keys: usize,
    scale: f32,
) -> Vec<f32> {
    let step = rows_per_task(keys) * keys;
    let mut out = vec![0.0; probs.len()];
    out.par_chunks_mut(step).enumerate().for_each(|(t, o)| {
        let range = t * step..t * step + o.len();
        let k = keep.map(|k| &k[range.clone()]);
        softmax_backward_rows(o, &probs[range.clone()], &grad[range], k, keys, scale)
    });
    out
}

/// What [`add_layer_norm`] returns: the output and, when asked for, the normalized rows and
/// each row's 1/std.
pub struct LayerNormRows {
    pub output: Vec<f32>,
    pub stats: Option<(Vec<f32>, Vec<f32>)>,
}

/// One row: s = x + residual, n = (s − mean)/√(var + eps), out = n·gamma + beta; returns 1/std.
#[inline(always)]
fn layer_norm_row(
    x: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    normalized: &mut [f32],
    out: &mut [f32],
) -> f32 {
    let hidden = x.len() as f32;
    for ((n, &x), &r) in normalized.iter_mut().zip(x).zip(residual) {
        *n = x + r;
    }
    let mean = sum(normalized) / hidden;
    for n in normalized.iter_mut() {
        *n -= mean;
    }
    let squares = dot(normalized, normalized);
    let inv_std = 1.0 / (squares / hidden + eps).sqrt();
    for (((o, n), &g), &b) in out
        .iter_mut()
        .zip(normalized.iter_mut())
        .zip(gamma)
        .zip(beta)
    {
        *n *= inv_std;
        *o = *n * g + b;
    }
    inv_std
}

multiversion! {
    /// Rows of LayerNorm; `normalized` and `inv_std` are filled when not empty.
    fn layer_norm_rows(
        out: &mut [f32],
        normalized: &mut [f32],
        inv_std: &mut [f32],
        x: &[f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let hidden = gamma.len();
        let mut scratch = vec![0.0; if normalized.is_empty() { hidden } else { 0 }];
        for (i, out) in out.chunks_exact_mut(hidden).enumerate() {
            let row = i * hidden..(i + 1) * hidden;
            let n = if normalized.is_empty() {
                &mut scratch[..]
            } else {
                &mut normalized[row.clone()]
            };
            let s = layer_norm_row(&x[row.clone()], &residual[row], gamma, beta, eps, n, out);
            if let Some(slot) = inv_std.get_mut(i) {
                *slot = s;
            }
        }
    }
}

/// LayerNorm(x + residual)·gamma + beta over rows of `gamma.len()`.
pub fn add_layer_norm(
    x: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    keep_stats: bool,
) -> LayerNormRows {
    let hidden = gamma.len();
    let rows_per = rows_per_task(hidden);
    let step = rows_per * hidden;
    let mut output = vec![0.0; x.len()];
    let rows = x.len() / hidden.max(1);
    let mut normalized = vec![0.0; if keep_stats { x.len() } else { 0 }];
    let mut inv_std = vec![0.0; if keep_stats { rows } else { 0 }];
    let task = |t: usize, out: &mut [f32], normalized: &mut [f32], inv_std: &mut [f32]| {
        let range = t * step..t * step + out.len();
        layer_norm_rows(
            out,
            normalized,
            inv_std,
            &x[range.clone()],
            &residual[range],
            gamma,
            beta,
            eps,
        )
    };
    if keep_stats {
        output
            .par_chunks_mut(step)
            .zip(normalized.par_chunks_mut(step))
            .zip(inv_std.par_chunks_mut(rows_per))
            .enumerate()
            .for_each(|(t, ((out, n), s))| task(t, out, n, s));
        LayerNormRows {
            output,
            stats: Some((normalized, inv_std)),
        }
    } else {
        output
            .par_chunks_mut(step)
            .enumerate()
            .for_each(|(t, out)| task(t, out, &mut [], &mut []));
        LayerNormRows {
            output,
            stats: None,
        }
    }
}

multiversion! {
    /// Rows of the LayerNorm backward; adds each row's terms to `gamma_grad` and `beta_grad`.
    fn layer_norm_backward_rows(
        input: &mut [f32],
        gamma_grad: &mut [f32],
        beta_grad: &mut [f32],
        grad: &[f32],
        normalized: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
    ) {
        let hidden = gamma.len();
        for (i, input) in input.chunks_exact_mut(hidden).enumerate() {
            let row = i * hidden..(i + 1) * hidden;
            let dy = &grad[row.clone()];
            let n = &normalized[row];
            for (((d, &dy), &n), (gg, bg)) in input
                .iter_mut()
                .zip(dy)
                .zip(n)
                .zip(gamma_grad.iter_mut().zip(beta_grad.iter_mut()))
            {
                *gg += dy * n;
                *bg += dy;
                *d = dy;
            }
            for (d, &g) in input.iter_mut().zip(gamma) {
                *d *= g;
            }
            let mean_g = sum(input) / hidden as f32;
            let mean_gn = dot(input, n) / hidden as f32;
            let s = inv_std[i];
            for (d, &n) in input.iter_mut().zip(n) {
                *d = (*d - mean_g - n * mean_gn) * s;
            }
        }
    }
}

/// The gradients of LayerNorm(x + residual): (d input, d gamma, d beta); see
/// [`super::composed::add_layer_norm_backward`] for the formulas.
pub fn add_layer_norm_backward(
    grad: &[f32],
    normalized: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hidden = gamma.len();
    let rows_per = rows_per_task(hidden);
    let step = rows_per * hidden;
    let mut input = vec![0.0; grad.len()];
    // Each task's partial sums, added in task order afterwards: a fixed order, so that the
    // gradients of gamma and beta do not depend on how rayon scheduled the tasks.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = input
        .par_chunks_mut(step)
        .enumerate()
        .map(|(t, input)| {
            let mut gamma_grad = vec![0.0f32; hidden];
            let mut beta_grad = vec![0.0f32; hidden];
            let range = t * step..t * step + input.len();
            layer_norm_backward_rows(
                input,
                &mut gamma_grad,
                &mut beta_grad,
                &grad[range.clone()],
                &normalized[range],
                &inv_std[t * rows_per..],
                gamma,
            );
            (gamma_grad, beta_grad)
        })
        .collect();
    let mut gamma_grad = vec![0.0f32; hidden];
    let mut beta_grad = vec![0.0f32; hidden];
    for (gamma_part, beta_part) in &partials {
        for (total, part) in gamma_grad.iter_mut().zip(gamma_part) {
            *total += part;
        }
        for (total, part) in beta_grad.iter_mut().zip(beta_part) {
            *total += part;
        }
    }
    (input, gamma_grad, beta_grad)
}
