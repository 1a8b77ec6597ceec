//! Layer-sequential, two-stream calibration through the Burn encoder (docs/algorithms.md §3.2):
//! a full-precision stream h_f and a partly quantized stream h_q advance layer by layer;
//! inside each layer the groups {query, key, value} → attention output → intermediate →
//! output are solved in turn, each on statistics collected with the earlier groups already
//! quantized (true-sequential). Only layer-boundary states are kept, never per-module inputs.

use crate::kernels::Backend;
use burn::tensor::{Int, Tensor};
use faer::Mat;
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::model::bert::{EncoderInput, attention_mask_bias};
use crate::model::weights::{linear_weight_out_in, set_linear_weight_out_in};
use crate::quant::solve::ModuleSolver;
use crate::quant::stats::{StatsAccumulator, StatsNeeded, sample_sequence_alpha};
use crate::seed::substream_rng;

/// The groups of linear layers that share an input, in processing order (§3.2).
pub const GROUPS: [&[&str]; 4] = [
    &[
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ],
    &["attention.output.dense"],
    &["intermediate.dense"],
    &["output.dense"],
];

/// Per-module outcome of calibration.
#[derive(Debug, Clone)]
pub struct ModuleRecord {
    pub name: String,
    pub tokens: usize,
    pub seconds: f64,
}

/// `[b, t, n]` → `[tokens, n]` without the padded positions, in f64.
fn tokens_of<B: Backend>(x: Tensor<B, 3>, keep: &[bool]) -> Result<Mat<f64>> {
    let [_, _, n] = x.dims();
    let values = x
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| Error::Internal(format!("reading activations back: {e:?}")))?;
    let rows: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
    Ok(Mat::from_fn(rows.len(), n, |t, j| {
        f64::from(values[rows[t] * n + j])
    }))
}

fn keep_mask<B: Backend>(mask: &Tensor<B, 2, Int>) -> Result<Vec<bool>> {
    Ok(mask
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| Error::Internal(format!("reading the attention mask: {e:?}")))?
        .into_iter()
        .map(|v| v != 0)
        .collect())
}

/// A warning when `tokens` calibration tokens are too few for layers whose widest input has
/// `widest` features: below 4 tokens per feature the second moments R_xx = XᵀX/n (and so the
/// activation scaling S of QERA, SRR and the PTQ solvers' Hessians) are poorly estimated, and
/// below one per feature R_xx is singular.
pub fn thin_calibration(tokens: usize, widest: usize) -> Option<String> {
    (tokens < 4 * widest).then(|| {
        format!(
            "the calibration set has {tokens} tokens, fewer than 4 × the widest layer input ({widest}): \
             its activation statistics are poorly estimated; use more or longer calibration texts \
             (--calib-samples, quant.calib_samples)"
        )
    })
}

/// Quantizes every target linear of `encoder` in place, layer by layer, calling `solver` with
/// each module's statistics over `batches` (padding dropped, §3.3). `encoder` starts in full
/// precision; a copy of it drives the full-precision stream.
pub fn calibrate<B: Backend>(
    encoder: &mut Encoder<B>,
    batches: &[EncoderInput<B>],
    needed: StatsNeeded,
    solver: &mut impl ModuleSolver,
) -> Result<Vec<ModuleRecord>> {
    if batches.is_empty() {
        return Err(Error::Config("calibration needs at least one batch".into()));
    }
    let reference = encoder.clone();
    let masks: Vec<Vec<bool>> = batches
        .iter()
        .map(|b| keep_mask(&b.attention_mask))
        .collect::<Result<_>>()?;
    let tokens = masks.iter().flatten().filter(|&&keep| keep).count();
    let widest = encoder
        .linear_names()
        .iter()
        .filter_map(|name| encoder.linear(name))
        .map(|linear| linear.weight.dims()[0])
        .max()
        .unwrap_or(0);
    if let Some(warning) = thin_calibration(tokens, widest) {
        eprintln!("warning: {warning}");
    }
    let biases: Vec<Tensor<B, 4>> = batches
        .iter()
        .map(|b| attention_mask_bias(&b.attention_mask))
        .collect();
    let mut h_f: Vec<Tensor<B, 3>> = batches
        .iter()
        .map(|b| reference.embeddings.forward(b))
        .collect();
    // The quantized stream starts as the full-precision one; either may be skipped when no
    // statistic reads it (§3 table), but one always runs.
    let quantized_needed = needed.quantized_stream();
    let full_precision_needed = needed.full_precision() || !quantized_needed;
    let mut h_q = quantized_needed.then(|| h_f.clone());
    let modules: usize = GROUPS.iter().map(|g| g.len()).sum::<usize>() * encoder.layers.len();
    let progress = ProgressBar::new(modules as u64).with_style(
        ProgressStyle::with_template("{msg:40} {bar:30} {pos}/{len} [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    let mut records = Vec::with_capacity(modules);
    for layer in 0..encoder.layers.len() {
        // Each stream advances one group at a time, so a group's input is computed once, after
        // the groups before it were quantized (true-sequential at the cost of one forward).
        let mut q_stages: Option<Vec<_>> = h_q.as_ref().map(|states| {
            states
                .iter()
                .map(|h| encoder.layers[layer].stages(h.clone()))
                .collect()
        });
        let mut f_stages: Option<Vec<_>> = full_precision_needed.then(|| {
            h_f.iter()
                .map(|h| reference.layers[layer].stages(h.clone()))
                .collect()
        });
        for (group, names) in GROUPS.iter().enumerate() {
            let width = {
                let first = encoder.layers[layer]
                    .linear(names[0])
                    .expect("known module");
                first.weight.dims()[0]
            };
            let mut acc = StatsAccumulator::new(width, needed);
            // SNRQ-S draws a fresh α_s per sequence for every group's statistics (§7.3 (b)).
            let mut alpha_rng = needed.sampled_mismatch.map(|seed| {
                substream_rng(
                    seed,
                    &format!("coreq-sampled-alpha/layer-{layer}/group-{group}"),
                )
            });
            for (i, mask) in masks.iter().enumerate() {
                let token_alpha = alpha_rng.as_mut().map(|rng| {
                    let [sequences, length] = batches[i].attention_mask.dims();
                    let alpha: Vec<f64> =
                        (0..sequences).map(|_| sample_sequence_alpha(rng)).collect();
                    (0..mask.len())
                        .filter(|&p| mask[p])
                        .map(|p| alpha[p / length])
                        .collect::<Vec<f64>>()
                });
                let x_q = q_stages
                    .as_ref()
                    .map(|stages| tokens_of(stages[i].input().clone(), mask))
                    .transpose()?;
                let x_f = f_stages
                    .as_ref()
                    .map(|stages| tokens_of(stages[i].input().clone(), mask))
                    .transpose()?;
                match (&x_q, &x_f) {
                    (Some(q), Some(f)) => {
                        acc.add_weighted(q.as_ref(), f.as_ref(), token_alpha.as_deref())
                    }
                    (Some(x), None) | (None, Some(x)) => acc.add(x.as_ref(), x.as_ref()),
                    (None, None) => unreachable!("one stream always runs"),
                }
            }
            let stats = acc.finish();
            solver.start_group(&stats)?;
            for suffix in names.iter() {
                let name = format!("encoder.layer.{layer}.{suffix}");
                progress.set_message(name.clone());
                let started = std::time::Instant::now();
                let linear = encoder.layers[layer]
                    .linear_mut(suffix)
                    .expect("known module");
                let weight = linear_weight_out_in(linear)?;
                let solved = solver.solve(&name, weight.as_ref(), &stats)?;
                set_linear_weight_out_in(linear, solved.as_ref())?;
                records.push(ModuleRecord {
                    name,
                    tokens: stats.tokens,
                    seconds: started.elapsed().as_secs_f64(),
                });
                progress.inc(1);
            }
            for (i, bias) in biases.iter().enumerate() {
                if let Some(stages) = q_stages.as_mut() {
                    stages[i].advance(&encoder.layers[layer], bias.clone());
                }
                if let Some(stages) = f_stages.as_mut() {
                    stages[i].advance(&reference.layers[layer], bias.clone());
                }
            }
        }
        if let Some(stages) = q_stages {
            h_q = Some(stages.iter().map(|s| s.input().clone()).collect());
        }
        if let Some(stages) = f_stages {
            h_f = stages.iter().map(|s| s.input().clone()).collect();
        }
    }
    progress.finish_and_clear();
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::thin_calibration;

    #[test]
    fn thin_calibration_warns_below_four_tokens_per_input_feature() {
        assert!(thin_calibration(6143, 1536).is_some());
        assert!(thin_calibration(6144, 1536).is_none());
        let text = thin_calibration(100, 384).unwrap();
        assert!(
            text.contains("100 tokens") && text.contains("(384)"),
            "{text}"
        );
    }
}
