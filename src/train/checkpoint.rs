//! Training checkpoints: `<run>/checkpoints/<epoch-N | step-N>/` with the trainable
//! parameters (`trainable.safetensors`, keyed by module path, Burn layout), AdamW's moments
//! and step (`optimizer.safetensors`) and the loop state (`state.json`: position in the data
//! order, schedule step, metrics so far). A checkpoint is written into a `.partial` folder and
//! renamed when complete, so a crash never leaves a half-written one behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::kernels::{AutodiffBackend, Backend};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, Moments};
use crate::error::{Error, Result};
use crate::formats::checkpoint::WeightFile;
use crate::formats::safetensors::write_f32_tensors;
use crate::layers::qlora_linear::to_vec;

/// Where the training loop stands after an optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopState {
    /// The epoch in progress (0-based); equal to the epoch count when training is done.
    pub epoch: usize,
    /// Optimizer steps done within `epoch`.
    pub step_in_epoch: usize,
    /// Optimizer steps done in total (the schedule's position).
    pub global_step: usize,
    /// Training examples seen.
    pub samples: usize,
    /// Seconds spent in training steps so far (evaluation excluded).
    pub train_seconds: f64,
    /// The summed step losses of the epoch in progress.
    pub epoch_loss_sum: f64,
    /// One entry per finished epoch.
    pub epochs: Vec<EpochRecord>,
}

/// The metrics after one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub main: f64,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub learning_rate: f64,
}

/// Writes `dir` (replacing an older one of the same name) from the trainable parameters of
/// `module`, the optimizer and `state`.
pub fn save_checkpoint<AB, M>(
    dir: &Path,
    module: &M,
    optimizer: &AdamW<AB::InnerBackend>,
    state: &LoopState,
) -> Result<()>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut collector = TrainableValues {
        path: Vec::new(),
        values: Vec::new(),
    };
    module.visit(&mut collector);
    write_f32_tensors(
        &partial.join("trainable.safetensors"),
        &collector.values,
        &[],
    )?;
    let mut moments = Vec::new();
    let mut names: Vec<&String> = optimizer.moments.keys().collect();
    names.sort();
    for name in names {
        let m = &optimizer.moments[name];
        for (suffix, tensor) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
            moments.push((
                format!("{name}.{suffix}"),
                tensor.dims().to_vec(),
                to_vec(tensor.clone())?,
            ));
        }
    }
    write_f32_tensors(
        &partial.join("optimizer.safetensors"),
        &moments,
        &[("step", optimizer.step.to_string())],
    )?;
    let state_path = partial.join("state.json");
    std::fs::write(
        &state_path,
        serde_json::to_string_pretty(state).map_err(|e| Error::Internal(e.to_string()))?,
    )
    .map_err(|e| Error::io(&state_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

struct TrainableValues {
    path: Vec<String>,
    values: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for TrainableValues {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let tensor = param.val();
        if tensor.is_require_grad() {
            let dims = tensor.dims().to_vec();
            let values = to_vec(tensor.inner()).expect("a float tensor reads back as f32");
            self.values.push((self.path.join("."), dims, values));
        }
    }
}

/// A checkpoint read back: its state, and the tensors to put into a module and optimizer.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub state: LoopState,
    trainable: WeightFile,
    optimizer: WeightFile,
}

impl LoadedCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: LoopState = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: state_path.clone(),
            source: e,
        })?;
        Ok(LoadedCheckpoint {
            dir: dir.to_path_buf(),
            state,
            trainable: WeightFile::open(&dir.join("trainable.safetensors"))?,
            optimizer: WeightFile::open(&dir.join("optimizer.safetensors"))?,
        })
    }

    /// `module` with every trainable parameter replaced by the checkpoint's value; a
    /// trainable parameter the checkpoint lacks (another recipe) is an error.
    pub fn restore_module<B: Backend, M: burn::module::Module<B>>(&self, module: M) -> Result<M> {
        let mut loader = TrainableLoader {
            file: &self.trainable,
            path: Vec::new(),
            error: None,
            loaded: 0,
        };
        let module = module.map(&mut loader);
        if let Some(error) = loader.error {
            return Err(error);
        }
        let stored = self.trainable.names().len();
        if loader.loaded != stored {
            return Err(Error::InvalidWeights {
                path: self.trainable.path().to_path_buf(),
                message: format!(
                    "holds {stored} trainable tensors but the model has {} trainable parameters: the checkpoint belongs to another recipe",
                    loader.loaded
                ),
            });
        }
        Ok(module)
    }

    /// The optimizer state, on `device`.
    pub fn restore_optimizer<B: Backend>(
        &self,
        optimizer: &mut AdamW<B>,
        device: &B::Device,
    ) -> Result<()> {
        let read = |name: &str| -> Result<Tensor<B, 2>> {
            let shape = self.optimizer.shape(name)?;
            let [rows, cols] = shape[..] else {
                return Err(Error::InvalidWeights {
                    path: self.optimizer.path().to_path_buf(),
                    message: format!("'{name}' is not a matrix"),
                });
            };
            let values = self.optimizer.read_f32(name, &shape)?;
            Ok(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ))
        };
        let mut moments = HashMap::new();
        for name in self.optimizer.names() {
            if let Some(param) = name.strip_suffix(".exp_avg") {
                moments.insert(
                    param.to_string(),
                    Moments {
                        exp_avg: read(&name)?,
                        exp_avg_sq: read(&format!("{param}.exp_avg_sq"))?,
                    },
                );
            }
        }
        optimizer.moments = moments;
        optimizer.step = self.optimizer_step()?;
        Ok(())
    }

    fn optimizer_step(&self) -> Result<u64> {
        self.optimizer
            .header_entry("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::InvalidWeights {
                path: self.optimizer.path().to_path_buf(),
                message: "no optimizer step in the header".into(),
            })
    }
}

struct TrainableLoader<'a> {
    file: &'a WeightFile,
    path: Vec<String>,
    error: Option<Error>,
    loaded: usize,
}

impl<B: Backend> ModuleMapper<B> for TrainableLoader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() || self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let name = self.path.join(".");
        let dims = tensor.dims();
        match self.file.read_f32(&name, &dims) {
            Ok(values) => {
                self.loaded += 1;
                let restored = Tensor::from_data(TensorData::new(values, dims), &tensor.device())
                    .require_grad();
                Param::from_mapped_value(id, restored, mapper)
            }
            Err(e) => {
                self.error = Some(e);
                Param::from_mapped_value(id, tensor, mapper)
            }
        }
    }
}
