//! Model surgery (§12.1): replace the target linears of an encoder with [`QLoraLinear`]s —
//! from an init checkpoint (packed Q + PEFT factors written by `qpeft init`), or around the
//! dense pretrained weights with fresh LoRA factors (full-precision LoRA) — and choose which
//! parameters train: the adapters and the task head always, biases, LayerNorms and BERT's
//! pooler as configured; everything else is frozen.

use crate::kernels::Backend;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;
use rand::Rng;

use crate::error::{Error, Result};
use crate::formats::checkpoint::WeightFile;
use crate::layers::{AdapterSpec, DropoutPlacement, QLoraLinear, TargetLinear};
use crate::model::SequenceClassifier;
use crate::model::bert::LAYER_LINEARS;
use crate::model::weights::WeightScope;
use crate::seed::substream_rng;

/// Where the adapter factors come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterSource {
    /// The file is an init checkpoint: its `lora_A`/`lora_B` and `qpeft_adapters` header.
    Checkpoint,
    /// Fresh PEFT LoRA factors (A Kaiming-uniform, B = 0) of this rank and α, seeded.
    Fresh { rank: usize, alpha: f64, seed: u64 },
}

/// How the target linears are replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct SurgeryOptions {
    /// Suffixes below `encoder.layer.N.` (default: all six of [`LAYER_LINEARS`]).
    pub targets: Vec<String>,
    pub source: AdapterSource,
    pub dropout: f64,
    pub placement: DropoutPlacement,
}

impl SurgeryOptions {
    pub fn default_targets() -> Vec<String> {
        LAYER_LINEARS.iter().map(|s| s.to_string()).collect()
    }
}

/// Replaces every target linear of `model` with a [`QLoraLinear`] read from `file`, whose base
/// model tensors sit below `prefix`. Returns the HF names of the replaced layers.
pub fn attach_adapters<B: Backend>(
    model: &mut SequenceClassifier<B>,
    file: &WeightFile,
    options: &SurgeryOptions,
    device: &B::Device,
) -> Result<Vec<String>> {
    for target in &options.targets {
        if !LAYER_LINEARS.contains(&target.as_str()) {
            return Err(Error::Config(format!(
                "unknown adapter target '{target}': expected some of {}",
                LAYER_LINEARS.join(", ")
            )));
        }
    }
    let prefix = file.base_model_prefix()?;
    let scope = WeightScope::new(file, &prefix);
    let mut replaced = Vec::new();
    for index in 0..model.encoder.layers.len() {
        for suffix in &options.targets {
            let name = format!("encoder.layer.{index}.{suffix}");
            let slot = model
                .encoder
                .target_mut(&name)
                .expect("every layer has the six target linears");
            let TargetLinear::Dense(dense) = slot else {
                return Err(Error::Config(format!("{name} is adapted twice")));
            };
            let [d_in, d_out] = dense.weight.dims();
            let layer = scope.child(&name);
            let frozen = layer.frozen_weight(d_in, d_out)?;
            let bias = layer
                .contains("bias")
                .then(|| layer.values("bias", &[d_out]))
                .transpose()?;
            let (lora_a, lora_b, spec) = match &options.source {
                AdapterSource::Checkpoint => {
                    let meta = file.adapters().ok_or_else(|| {
                        Error::InvalidWeights {
                            path: file.path().to_path_buf(),
                            message: "no `qpeft_adapters` header: not an init checkpoint (write one with `qpeft init`)".into(),
                        }
                    })?;
                    let r = meta.rank;
                    let info = meta
                        .layers
                        .get(&name)
                        .ok_or_else(|| Error::InvalidWeights {
                            path: file.path().to_path_buf(),
                            message: format!("the init checkpoint has no adapter for {name}"),
                        })?;
                    (
                        layer.values("lora_A", &[r, d_in])?,
                        layer.values("lora_B", &[d_out, r])?,
                        AdapterSpec {
                            rank: r,
                            scale: meta.scale(),
                            preserved: info.preserved,
                            singular_values: info.singular_values.clone(),
                            dropout: options.dropout,
                            placement: options.placement,
                        },
                    )
                }
                AdapterSource::Fresh { rank, alpha, seed } => {
                    // PEFT: kaiming_uniform_(a = √5) on lora_A, i.e. U(±1/√in); lora_B = 0.
                    let bound = 1.0 / (d_in as f64).sqrt();
                    let mut rng = substream_rng(*seed, &format!("lora-init/{name}"));
                    let a = (0..rank * d_in)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect();
                    (
                        a,
                        vec![0.0; d_out * rank],
                        AdapterSpec {
                            rank: *rank,
                            scale: alpha / *rank as f64,
                            preserved: 0,
                            singular_values: Vec::new(),
                            dropout: options.dropout,
                            placement: options.placement,
                        },
                    )
                }
            };
            let adapted = QLoraLinear::new(frozen, bias, &lora_a, &lora_b, spec, device)
                .map_err(|e| Error::InvalidData(format!("{name}: {e}")))?;
            *slot = TargetLinear::Adapted(adapted);
            replaced.push(name);
        }
    }
    Ok(replaced)
}

/// Which parameters train besides the adapter factors and the classifier (§12.1 choices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainableSet {
    /// The biases of the adapted layers (LoftQ's code; PEFT `bias="none"` freezes them).
    pub biases: bool,
    /// Every LayerNorm.
    pub layer_norms: bool,
    /// BERT's pooler dense layer (recommended: trained with the classifier).
    pub pooler: bool,
}

impl TrainableSet {
    /// Whether the parameter at module `path` (Burn's field names joined by '.') trains.
    pub fn trains(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        if matches!(last, "lora_a" | "lora_b") {
            return true;
        }
        if path.starts_with("head.") {
            return self.pooler || !path.contains(".pooler.");
        }
        (self.biases && path.contains(".Adapted.") && last == "bias")
            || (self.layer_norms && path.contains("layer_norm"))
    }
}

/// Whether AdamW decays the parameter at `path`: not biases and not LayerNorms (§ trainer).
pub fn decays(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    !(last == "bias" || path.contains("layer_norm"))
}

/// Marks the parameters of `set` as trainable and freezes all others.
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, set: TrainableSet) -> M {
    module.map(&mut RequireGrad {
        path: Vec::new(),
        set,
    })
}

struct RequireGrad {
    path: Vec<String>,
    set: TrainableSet,
}

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let trains = self.set.trains(&self.path.join("."));
        param.set_require_grad(trains)
    }
}
