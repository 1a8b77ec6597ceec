//! A base quantizer as one typed, serializable spec — what `qpeft quantize`'s and `qpeft init`'s
//! flags and a recipe's `[quant]` section describe — and its resolution into a solver
//! [`Method`] with its [`GptqConfig`], method defaults filled in.

use serde::{Deserialize, Serialize};

use super::coreq::AlphaMode;
use super::gptq::{GptaqFlush, GptqConfig};
use super::grid::{Bits, GridKind, GridSpec, MseSearch, Rounding, ScaleDtype};
use super::layer::Grouping;
use super::qronos::QronosLambda;
use super::solve::{CoreqAlpha, Method, QuantMethod};
use crate::error::{Error, Result};
use crate::seed::substream_seed;

/// CoreQ's α rule (§7.3).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum CoreqAlphaMode {
    /// --alpha for every module.
    Fixed,
    /// The reference's schedule: 0 in layer 0, --alpha in layer 1 (default 0.25 per row,
    /// 0.5 with groups), then each module's α* from one layer earlier.
    Scheduled,
    /// SNRQ-S: per-sequence α_s = min(β, 1 − β), β ~ Beta(5, 5), seeded by --seed.
    Sampled,
    /// Round with --alpha (default 0.25), re-round with that rounding's closed-form α*.
    Closed,
    /// Like closed, but keep the second rounding only if it lowers the objective
    /// (recommended).
    Alternate,
}

/// ResComp's flush (§6 Choice).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum RescompMode {
    /// Snapshot flush without clamp: blocked equals unblocked (recommended).
    Snapshot,
    /// The reference's `allw`: snapshot clamped to the grid range (its 3-bit setting).
    Allw,
    /// The reference's `org`: the block's quantized values (its 2-bit setting).
    Org,
}

/// A base quantizer: the method and every setting that changes its result. `None` takes the
/// method's default (docs/algorithms.md §4–§9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizerSpec {
    pub method: QuantMethod,
    pub bits: u8,
    /// Default: the caller's (each method's reference grid for `quantize`, MXINT for `init`).
    pub grid: Option<GridKind>,
    /// Group size along the input dimension; 0 for one grid per row.
    pub group: Option<usize>,
    /// Fit all group grids up front on the original weights (always so for MXINT and NF).
    pub static_groups: bool,
    /// Process columns in their original order instead of by decreasing H_jj.
    pub no_act_order: bool,
    /// MSE clipping search for the grids (|e|^2.4).
    pub mse: bool,
    /// Unbiased stochastic rounding, seeded by the calibration seed.
    pub stochastic: bool,
    /// GPTAQ's mismatch weight; CoreQ's fixed, initial or layer-1 α; K-CoreQ's α.
    pub alpha: Option<f64>,
    pub alpha_mode: Option<CoreqAlphaMode>,
    /// K-CoreQ's beam width K.
    pub beams: Option<usize>,
    /// CoreQ's coordinate-descent passes after rounding.
    pub cd_passes: Option<usize>,
    /// ResComp's α₂.
    pub alpha2: Option<f64>,
    pub rescomp_mode: Option<RescompMode>,
    /// Qronos' ridge λ, absolute.
    pub qronos_lambda: Option<f64>,
    /// Qronos' ridge λ as a fraction of mean(diag H).
    pub qronos_damp: Option<f64>,
    /// Quantize the embedding tables too, per row at these bits (LoftQ's GLUE scripts quantize
    /// them); `None` keeps them in full precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<u8>,
    /// The grids' scale precision; `None` is f32. Not for MXINT, whose blocks store an exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_dtype: Option<ScaleDtype>,
}

impl QuantizerSpec {
    /// `method` at `bits` with every other setting at its default.
    pub fn new(method: QuantMethod, bits: u8) -> Self {
        QuantizerSpec {
            method,
            bits,
            grid: None,
            group: None,
            static_groups: false,
            no_act_order: false,
            mse: false,
            stochastic: false,
            alpha: None,
            alpha_mode: None,
            beams: None,
            cd_passes: None,
            alpha2: None,
            rescomp_mode: None,
            qronos_lambda: None,
            qronos_damp: None,
            embeddings: None,
            scale_dtype: None,
        }
    }
}

impl QuantizerSpec {
    /// CoreQ's α from --alpha-mode and --alpha; `default_group` decides the scheduled mode's
    /// layer-1 α when --group is not given.
    fn coreq_alpha(&self, default_group: usize, seed: u64) -> Result<CoreqAlpha> {
        let initial = self.alpha.unwrap_or(0.25);
        Ok(match self.alpha_mode.unwrap_or(CoreqAlphaMode::Alternate) {
            CoreqAlphaMode::Fixed => CoreqAlpha::PerModule(AlphaMode::Fixed(
                self.alpha
                    .ok_or_else(|| Error::Config("--alpha-mode fixed needs --alpha".into()))?,
            )),
            CoreqAlphaMode::Closed => CoreqAlpha::PerModule(AlphaMode::Closed { initial }),
            CoreqAlphaMode::Alternate => CoreqAlpha::PerModule(AlphaMode::Alternate { initial }),
            CoreqAlphaMode::Sampled => {
                if self.alpha.is_some() {
                    return Err(Error::Config(
                        "--alpha has no meaning with --alpha-mode sampled".into(),
                    ));
                }
                CoreqAlpha::Sampled {
                    seed: substream_seed(seed, "coreq-sampled-alpha"),
                }
            }
            CoreqAlphaMode::Scheduled => CoreqAlpha::Scheduled {
                second_layer: self
                    .alpha
                    .unwrap_or(if self.group.unwrap_or(default_group) == 0 {
                        0.25
                    } else {
                        0.5
                    }),
            },
        })
    }
}

impl QuantizerSpec {
    /// A method-specific flag given with another method would be silently ignored: refuse it.
    fn reject_flags_of_other_methods(&self, method: QuantMethod) -> Result<()> {
        use QuantMethod::*;
        let flags: [(&str, bool, &[QuantMethod]); 8] = [
            (
                "--alpha",
                self.alpha.is_some(),
                &[Gptaq, Rescomp, Coreq, Kcoreq],
            ),
            ("--alpha-mode", self.alpha_mode.is_some(), &[Coreq]),
            ("--cd-passes", self.cd_passes.is_some(), &[Coreq]),
            ("--beams", self.beams.is_some(), &[Kcoreq]),
            ("--alpha2", self.alpha2.is_some(), &[Rescomp]),
            ("--rescomp-mode", self.rescomp_mode.is_some(), &[Rescomp]),
            ("--qronos-lambda", self.qronos_lambda.is_some(), &[Qronos]),
            ("--qronos-damp", self.qronos_damp.is_some(), &[Qronos]),
        ];
        for (flag, given, methods) in flags {
            if given && !methods.contains(&method) {
                let names: Vec<String> = methods.iter().map(QuantMethod::to_string).collect();
                return Err(Error::Config(format!(
                    "{flag} applies to {} only, not to {}",
                    names.join(", "),
                    method
                )));
            }
        }
        Ok(())
    }
}

/// A fully resolved base quantizer.
pub struct Quantizer {
    pub method: Method,
    pub config: GptqConfig,
    pub kind: GridKind,
    pub group: usize,
    /// Bits of the embedding tables; `None` keeps them in full precision.
    pub embedding_bits: Option<Bits>,
}

impl QuantizerSpec {
    /// The method and its configuration; `default_grid` and `default_group` fill what the
    /// command line left out.
    pub fn resolve(
        &self,
        default_grid: GridKind,
        default_group: usize,
        seed: u64,
    ) -> Result<Quantizer> {
        let method = self.method;
        self.reject_flags_of_other_methods(method)?;
        if self.qronos_lambda.is_some() && self.qronos_damp.is_some() {
            return Err(Error::Config(
                "--qronos-lambda and --qronos-damp both set Qronos' λ: give one".into(),
            ));
        }
        let bits = Bits::new(self.bits)?;
        let kind = self.grid.unwrap_or(default_grid);
        let method = match method {
            QuantMethod::None => {
                return Err(Error::Config(
                    "`none` is no quantizer: it keeps the weights in full precision (a recipe's quant.method = \"none\" with adapter.init = \"lora\")".into(),
                ));
            }
            QuantMethod::Rtn => Method::Rtn,
            QuantMethod::Gptq => Method::Gptq,
            QuantMethod::Gptaq => Method::Gptaq {
                alpha: self.alpha.unwrap_or(0.25),
                flush: GptaqFlush::Snapshot,
            },
            QuantMethod::Rescomp => Method::Rescomp {
                alpha: self.alpha.unwrap_or(0.25),
                alpha2: self.alpha2.unwrap_or(0.25),
                flush: match self.rescomp_mode.unwrap_or(RescompMode::Snapshot) {
                    RescompMode::Snapshot => GptaqFlush::Snapshot,
                    RescompMode::Allw => GptaqFlush::ClampedSnapshot,
                    RescompMode::Org => GptaqFlush::Quantized,
                },
            },
            QuantMethod::Qronos => Method::Qronos {
                lambda: match (self.qronos_lambda, self.qronos_damp) {
                    (Some(lambda), _) => QronosLambda::Absolute(lambda),
                    (None, Some(fraction)) => QronosLambda::MeanDiagonal(fraction),
                    (None, None) => QronosLambda::Reference,
                },
            },
            QuantMethod::Coreq => Method::Coreq {
                alpha: self.coreq_alpha(default_group, seed)?,
                cd_passes: self.cd_passes.unwrap_or(0),
            },
            QuantMethod::Kcoreq => Method::Kcoreq {
                alpha: self.alpha.unwrap_or(0.25),
                beams: self.beams.unwrap_or(4),
            },
        };
        let scale_dtype = self.scale_dtype.unwrap_or_default();
        if kind == GridKind::MxInt && scale_dtype != ScaleDtype::F32 {
            return Err(Error::Config(format!(
                "scale dtype {scale_dtype} does not apply to the mxint grid: its blocks store a power-of-two step as one 8-bit exponent"
            )));
        }
        let grid = GridSpec {
            mse: self.mse.then(MseSearch::default),
            scale_dtype,
            ..GridSpec::new(bits, kind)
        };
        let group = self.group.unwrap_or(default_group);
        let config = GptqConfig {
            // An MXINT or NF block is consecutive input features by definition, so it is static.
            grouping: match (
                group,
                self.static_groups || matches!(kind, GridKind::MxInt | GridKind::NormalFloat),
            ) {
                (0, _) => Grouping::PerRow,
                (g, false) => Grouping::Dynamic(g),
                (g, true) => Grouping::Static(g),
            },
            act_order: !self.no_act_order,
            rounding: if self.stochastic {
                Rounding::Stochastic {
                    seed: substream_seed(seed, "stochastic-rounding"),
                }
            } else {
                Rounding::Nearest
            },
            ..GptqConfig::new(grid)
        };
        Ok(Quantizer {
            method,
            config,
            kind,
            group,
            embedding_bits: self.embeddings.map(Bits::new).transpose()?,
        })
    }
}

crate::named!(CoreqAlphaMode, RescompMode);
