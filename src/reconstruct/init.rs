//! The initializers of Q + L·R for one layer W `[out, in]` at rank r (docs/algorithms.md §11):
//! QLoRA, LoftQ, the one-shot QER family (ZeroQuant-V2, LQER, QERA-approx/exact), LQ-LoRA and
//! SRR with its k rule. Every method is a pure function of W, a scaling S and a base
//! quantizer; the quantizer is a closure so any PTQ solver can quantize the residual.
//!
//! Convention: L `[out, r]`, R `[r, in]`, L·R is the low-rank term itself (no α/r factor);
//! the first k columns of L and rows of R are SRR's preserved block.

use faer::{Mat, MatRef};
use rand::Rng;

use super::lowrank::{
    FactorSplit, TruncatedSvd, split_factors, squared_norm, tail_fractions, truncated_svd,
};
use super::scaling::{Scaling, ScalingKind};
use crate::error::{Error, Result};
use crate::quant::layer::QuantizedLayer;
use crate::quant::stats::StatsNeeded;
use crate::seed::substream_rng;

/// How SRR splits the rank budget r into k preserved and r − k reconstructing components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KRule {
    /// k* = argmin_k ρ_k(WS)·ρ_{r−k}(ES) with one seeded Uniform(−1, 1) probe E (the paper).
    Probe,
    /// k = min(r, ⌊r·(1 − ρ_r(WS))⌋) (the authors' pre-release code).
    Prerelease,
    /// Run steps 2–3 for every k = 0..=r and keep the smallest true scaled error.
    Exact,
    Fixed(usize),
}

impl std::str::FromStr for KRule {
    type Err = Error;

    /// `probe`, `prerelease`, `exact` or a number.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "probe" => KRule::Probe,
            "prerelease" => KRule::Prerelease,
            "exact" => KRule::Exact,
            other => KRule::Fixed(other.parse().map_err(|_| {
                Error::Config(format!(
                    "expected probe, prerelease, exact or a number, got {other:?}"
                ))
            })?),
        })
    }
}

/// Written as its name (`probe`) or number, as recipes and flags spell it.
impl serde::Serialize for KRule {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read from a name or a number, quoted or not: `k_rule = 3` in a recipe and `--set
/// adapter.k_rule=3` (which TOML reads as an integer) mean the same as `"3"`.
impl<'de> serde::Deserialize<'de> for KRule {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct KRuleVisitor;

        impl serde::de::Visitor<'_> for KRuleVisitor {
            type Value = KRule;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("probe, prerelease, exact or a number")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<KRule, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, k: u64) -> std::result::Result<KRule, E> {
                usize::try_from(k)
                    .map(KRule::Fixed)
                    .map_err(|_| E::custom(format!("k = {k} does not fit this machine")))
            }

            fn visit_i64<E: serde::de::Error>(self, k: i64) -> std::result::Result<KRule, E> {
                u64::try_from(k)
                    .map_err(|_| E::custom(format!("k must be at least 0, got {k}")))
                    .and_then(|k| self.visit_u64(k))
            }
        }

        deserializer.deserialize_any(KRuleVisitor)
    }
}

impl std::fmt::Display for KRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KRule::Probe => f.write_str("probe"),
            KRule::Prerelease => f.write_str("prerelease"),
            KRule::Exact => f.write_str("exact"),
            KRule::Fixed(k) => write!(f, "{k}"),
        }
    }
}

/// An adapter initializer by name (recipes' `adapter.init`, `qpeft init --init`); `lora` is
/// PEFT's fresh init on a full-precision base, every other name an [`Initializer`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum InitName {
    Lora,
    Qlora,
    Loftq,
    #[serde(rename = "zeroquant-v2")]
    #[value(name = "zeroquant-v2")]
    ZeroquantV2,
    Lqer,
    QeraApprox,
    QeraExact,
    Lqlora,
    Srr,
}

crate::named!(InitName);

impl InitName {
    /// The balanced split for every SVD initializer (§11.1), not each paper's own: with Σ on
    /// one factor AdamW moves the other by a large fraction of its scale per step, and the rows
    /// trained measurably worse (SRR Σ-right: STS-B 33.48 at batch 16, √Σ 67.25 ± 4.10; QERA
    /// Σ-left 69.73 ± 5.90, √Σ 74.39 ± 1.46; CoLA 2.40 ± 2.32 against 7.66 ± 1.67; MRPC level;
    /// 3 seeds each, docs/results.md). `factor_split` keeps a paper's. `None` for `lora` and
    /// `qlora`, whose L·R starts at 0.
    pub fn default_split(self) -> Option<FactorSplit> {
        match self {
            InitName::Lora | InitName::Qlora => None,
            InitName::Loftq
            | InitName::ZeroquantV2
            | InitName::Lqer
            | InitName::QeraApprox
            | InitName::QeraExact
            | InitName::Lqlora
            | InitName::Srr => Some(FactorSplit::Sqrt),
        }
    }
}

/// A QER initializer (§11.2–§11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initializer {
    /// Q = quant(W), L = 0, R Kaiming-uniform (PEFT's default).
    Qlora,
    /// T alternations of Q = quant(W − LR) and LR = SVD_r(W − Q), unscaled.
    Loftq { iters: usize },
    /// k = 0 with S = I.
    ZeroquantV2,
    /// k = 0 with LQER's diagonal S.
    Lqer { batch_max: bool },
    /// k = 0 with S = diag(√R_xx,ii).
    QeraApprox,
    /// k = 0 with S = R_xx^{1/2}.
    QeraExact,
    /// k = r with S = R_xx^{1/2} (SRR form, §11.6 (a)).
    Lqlora,
    /// Preserve-then-quantize with S = R_xx^{1/2}; `joint_refit` refits all r components on
    /// W − Q_k after step 2.
    Srr { rule: KRule, joint_refit: bool },
}

impl Initializer {
    pub fn name(self) -> InitName {
        match self {
            Initializer::Qlora => InitName::Qlora,
            Initializer::Loftq { .. } => InitName::Loftq,
            Initializer::ZeroquantV2 => InitName::ZeroquantV2,
            Initializer::Lqer { .. } => InitName::Lqer,
            Initializer::QeraApprox => InitName::QeraApprox,
            Initializer::QeraExact => InitName::QeraExact,
            Initializer::Lqlora => InitName::Lqlora,
            Initializer::Srr { .. } => InitName::Srr,
        }
    }

    pub fn scaling(self) -> ScalingKind {
        match self {
            Initializer::Qlora | Initializer::Loftq { .. } | Initializer::ZeroquantV2 => {
                ScalingKind::Identity
            }
            Initializer::Lqer { batch_max } => ScalingKind::Lqer { batch_max },
            Initializer::QeraApprox => ScalingKind::QeraApprox,
            Initializer::QeraExact | Initializer::Lqlora | Initializer::Srr { .. } => {
                ScalingKind::QeraExact
            }
        }
    }

    /// The split L·R gets unless told otherwise: [`InitName::default_split`].
    pub fn default_split(self) -> FactorSplit {
        self.name().default_split().unwrap_or(FactorSplit::Sqrt)
    }

    /// Whether the first k components are a preserved block for gradient scaling (§12.2).
    pub fn has_preserved_block(self) -> bool {
        matches!(self, Initializer::Srr { .. })
    }

    /// The statistics the scaling needs.
    pub fn needs(self) -> StatsNeeded {
        self.scaling().needs()
    }
}

/// The name and the settings that change the result: `loftq (T = 5)`, `srr (k: probe)`.
impl std::fmt::Display for Initializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        match *self {
            Initializer::Loftq { iters } => write!(f, " (T = {iters})"),
            Initializer::Lqer { batch_max: true } => f.write_str(" (batch max)"),
            Initializer::Srr { rule, joint_refit } => {
                write!(
                    f,
                    " (k: {rule}{})",
                    if joint_refit { ", joint refit" } else { "" }
                )
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitConfig {
    pub init: Initializer,
    pub rank: usize,
    /// `None`: [`Initializer::default_split`].
    pub split: Option<FactorSplit>,
    /// Seeds the SRR probe and QLoRA's R, per layer by name.
    pub seed: u64,
}

/// One layer's initialization.
#[derive(Debug, Clone)]
pub struct LayerInit {
    pub quantized: QuantizedLayer,
    /// `[out, r]`
    pub l: Mat<f64>,
    /// `[r, in]`
    pub r: Mat<f64>,
    /// The SVD split: k components preserve W·S, r − k reconstruct the error.
    pub k: usize,
    /// The singular value behind each component, in L's column order (empty for QLoRA).
    pub singular_values: Vec<f64>,
    /// SRR: the probe rule's k*, whatever rule chose k.
    pub probe_k: Option<usize>,
    /// SRR with the exact rule: ‖(W − Ŵ(k))S‖_F/‖WS‖_F for k = 0..=r.
    pub scaled_error_by_k: Vec<f64>,
    /// LoftQ: ‖W − Q − LR‖_F/‖W‖_F after each iteration.
    pub loftq_errors: Vec<f64>,
}

impl LayerInit {
    /// Ŵ = Q + L·R.
    pub fn reconstructed(&self) -> Mat<f64> {
        &self.quantized.dequantized + &self.l * &self.r
    }
}

/// A base quantizer: the target `[out, in]` in, its quantized layer out.
pub type Quantize<'a> = dyn FnMut(MatRef<'_, f64>) -> Result<QuantizedLayer> + 'a;

/// Initializes the layer `w` named `name` (the name seeds its random draws).
pub fn initialize(
    name: &str,
    w: MatRef<'_, f64>,
    scaling: &Scaling,
    quantize: &mut Quantize<'_>,
    config: &InitConfig,
) -> Result<LayerInit> {
    let rank = config.rank;
    if rank == 0 || rank > w.nrows().min(w.ncols()) {
        return Err(Error::Config(format!(
            "{name}: rank {rank} must be in 1..={} (min(out, in))",
            w.nrows().min(w.ncols())
        )));
    }
    let split = config.split.unwrap_or(config.init.default_split());
    match config.init {
        Initializer::Qlora => qlora(name, w, quantize, config),
        Initializer::Loftq { iters } => loftq(w, quantize, rank, iters, split),
        Initializer::ZeroquantV2
        | Initializer::Lqer { .. }
        | Initializer::QeraApprox
        | Initializer::QeraExact => srr(name, w, scaling, quantize, config, KRule::Fixed(0), false),
        Initializer::Lqlora => srr(
            name,
            w,
            scaling,
            quantize,
            config,
            KRule::Fixed(rank),
            false,
        ),
        Initializer::Srr { rule, joint_refit } => {
            srr(name, w, scaling, quantize, config, rule, joint_refit)
        }
    }
}

/// §11.2: L = 0 and R ~ Uniform(±1/√in), PEFT's `kaiming_uniform_(a=√5)`.
fn qlora(
    name: &str,
    w: MatRef<'_, f64>,
    quantize: &mut Quantize<'_>,
    config: &InitConfig,
) -> Result<LayerInit> {
    let bound = 1.0 / (w.ncols() as f64).sqrt();
    let mut rng = substream_rng(config.seed, &format!("qlora/{name}"));
    let r = Mat::from_fn(config.rank, w.ncols(), |_, _| {
        rng.random_range(-bound..bound)
    });
    Ok(LayerInit {
        quantized: quantize(w)?,
        l: Mat::zeros(w.nrows(), config.rank),
        r,
        k: 0,
        singular_values: Vec::new(),
        probe_k: None,
        scaled_error_by_k: Vec::new(),
        loftq_errors: Vec::new(),
    })
}

/// §11.3, unscaled. T = 1 is ZeroQuant-V2 up to the split.
fn loftq(
    w: MatRef<'_, f64>,
    quantize: &mut Quantize<'_>,
    rank: usize,
    iters: usize,
    split: FactorSplit,
) -> Result<LayerInit> {
    if iters == 0 {
        return Err(Error::Config("LoftQ needs at least one iteration".into()));
    }
    let norm = squared_norm(w).sqrt();
    let mut low_rank = Mat::<f64>::zeros(w.nrows(), w.ncols());
    let mut errors = Vec::with_capacity(iters);
    let mut last = None;
    for _ in 0..iters {
        let quantized = quantize((w - &low_rank).as_ref())?;
        let svd = truncated_svd((w - &quantized.dequantized).as_ref(), rank)?;
        low_rank = svd.product();
        errors.push(squared_norm((w - &quantized.dequantized - &low_rank).as_ref()).sqrt() / norm);
        last = Some((quantized, svd));
    }
    let (quantized, svd) = last.expect("at least one iteration");
    let (l, r) = split_factors(svd.u.as_ref(), &svd.sigma, svd.v_t.as_ref(), split);
    Ok(LayerInit {
        quantized,
        l,
        r,
        k: 0,
        singular_values: svd.sigma,
        probe_k: None,
        scaled_error_by_k: Vec::new(),
        loftq_errors: errors,
    })
}

/// SRR's steps 2–3 for one k (§11.7): the quantized residual, the r components and the
/// squared scaled error ‖(W − Ŵ(k))S‖²_F.
struct SrrStep {
    quantized: QuantizedLayer,
    /// Components in L's order, Vᵀ not yet multiplied by S⁻¹.
    components: TruncatedSvd,
    scaled_error_sq: f64,
}

fn srr_step(
    w: MatRef<'_, f64>,
    ws_svd: Option<&TruncatedSvd>,
    k: usize,
    rank: usize,
    scaling: &Scaling,
    quantize: &mut Quantize<'_>,
    joint_refit: bool,
) -> Result<SrrStep> {
    let preserved = match (k, ws_svd) {
        (0, _) => None,
        (_, Some(svd)) => Some(svd.head(k)),
        (_, None) => unreachable!("k > 0 needs the SVD of W·S"),
    };
    // P_k = U_kΣ_kV_kᵀ·S⁻¹, kept out of the quantized part.
    let preserved_term = preserved
        .as_ref()
        .map(|p| scaling.apply_inverse(p.product().as_ref()));
    let target = match &preserved_term {
        Some(p) => w - p,
        None => w.to_owned(),
    };
    let quantized = quantize(target.as_ref())?;
    let (error, reconstruct_rank) = if joint_refit {
        (w - &quantized.dequantized, rank)
    } else {
        (&target - &quantized.dequantized, rank - k)
    };
    let error_scaled = scaling.apply(error.as_ref());
    let reconstruction = truncated_svd(error_scaled.as_ref(), reconstruct_rank)?;
    let scaled_error_sq = (squared_norm(error_scaled.as_ref())
        - reconstruction.sigma.iter().map(|s| s * s).sum::<f64>())
    .max(0.0);
    let components = match (joint_refit, preserved) {
        (false, Some(p)) => p.concat(&reconstruction),
        _ => reconstruction,
    };
    Ok(SrrStep {
        quantized,
        components,
        scaled_error_sq,
    })
}

/// k* = argmin_k ρ_k(WS)·ρ_{r−k}(ES), ties to the smallest k (§11.8).
pub fn probe_rule(rho_w: &[f64], rho_e: &[f64]) -> usize {
    let r = rho_w.len() - 1;
    let mut best = 0;
    for k in 1..=r {
        if rho_w[k] * rho_e[r - k] < rho_w[best] * rho_e[r - best] {
            best = k;
        }
    }
    best
}

fn probe_k(
    name: &str,
    w: MatRef<'_, f64>,
    ws_svd: &TruncatedSvd,
    ws_total: f64,
    scaling: &Scaling,
    rank: usize,
    seed: u64,
) -> Result<usize> {
    let mut rng = substream_rng(seed, &format!("srr-probe/{name}"));
    let probe = Mat::from_fn(w.nrows(), w.ncols(), |_, _| rng.random_range(-1.0..1.0));
    let es = scaling.apply(probe.as_ref());
    let es_sigma = truncated_svd(es.as_ref(), rank)?.sigma;
    Ok(probe_rule(
        &tail_fractions(&ws_svd.sigma, ws_total),
        &tail_fractions(&es_sigma, squared_norm(es.as_ref())),
    ))
}

fn srr(
    name: &str,
    w: MatRef<'_, f64>,
    scaling: &Scaling,
    quantize: &mut Quantize<'_>,
    config: &InitConfig,
    rule: KRule,
    joint_refit: bool,
) -> Result<LayerInit> {
    let rank = config.rank;
    let is_srr = matches!(config.init, Initializer::Srr { .. });
    let needs_ws = is_srr || !matches!(rule, KRule::Fixed(0));
    let ws = scaling.apply(w);
    let ws_total = squared_norm(ws.as_ref());
    let ws_svd = needs_ws
        .then(|| truncated_svd(ws.as_ref(), rank))
        .transpose()?;
    let probe = match &ws_svd {
        Some(svd) if is_srr => Some(probe_k(name, w, svd, ws_total, scaling, rank, config.seed)?),
        _ => None,
    };
    let mut scaled_error_by_k = Vec::new();
    let (k, step) = match rule {
        KRule::Fixed(k) if k > rank => {
            return Err(Error::Config(format!(
                "fixed k = {k} exceeds the rank {rank}"
            )));
        }
        KRule::Exact => {
            let mut best: Option<(usize, SrrStep)> = None;
            for k in 0..=rank {
                let step = srr_step(w, ws_svd.as_ref(), k, rank, scaling, quantize, joint_refit)?;
                scaled_error_by_k.push((step.scaled_error_sq / ws_total).sqrt());
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| step.scaled_error_sq < b.scaled_error_sq)
                {
                    best = Some((k, step));
                }
            }
            best.expect("k = 0 is always tried")
        }
        KRule::Fixed(_) | KRule::Prerelease | KRule::Probe => {
            let k = match rule {
                KRule::Fixed(k) => k,
                KRule::Probe => probe.expect("SRR computes the probe"),
                _ => {
                    let svd = ws_svd.as_ref().expect("computed for this rule");
                    let kept = 1.0 - tail_fractions(&svd.sigma, ws_total)[rank];
                    ((rank as f64 * kept).floor() as usize).min(rank)
                }
            };
            let step = srr_step(w, ws_svd.as_ref(), k, rank, scaling, quantize, joint_refit)?;
            (k, step)
        }
    };
    let split = config.split.unwrap_or(config.init.default_split());
    let components = step.components;
    let v_t_scaled = scaling.apply_inverse(components.v_t.as_ref());
    let (l, r) = split_factors(
        components.u.as_ref(),
        &components.sigma,
        v_t_scaled.as_ref(),
        split,
    );
    Ok(LayerInit {
        quantized: step.quantized,
        l,
        r,
        k,
        singular_values: components.sigma,
        probe_k: probe,
        scaled_error_by_k,
        loftq_errors: Vec::new(),
    })
}
