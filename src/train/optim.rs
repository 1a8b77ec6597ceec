//! The optimizer step of QPEFT training: AdamW with torch's semantics (decoupled weight decay
//! p ← p·(1 − η·λ), bias-corrected moments, ε added after the square root), global-norm
//! gradient clipping with torch's `clip_grad_norm_` semantics (one norm over all gradients,
//! scaled by max_norm/(norm + 1e-6) when that is below 1), the learning-rate schedules of HF
//! `transformers` (constant, linear or cosine after a linear warmup), SRR's scaling of the
//! preserved components (§12.2–§12.3): `grad` multiplies their gradients (before clipping, as a
//! backward hook would), `update` multiplies their AdamW step; and, optionally, the Riemannian
//! preconditioning of each adapter's factors (Zhang & Pilanci, ICML 2024, "Riemannian
//! Preconditioned LoRA"; PEFT's `create_riemannian_optimizer`), applied after clipping as PEFT's
//! optimizer does.

use std::collections::{HashMap, HashSet};

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};

use crate::kernels::{AutodiffBackend, Backend};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::cast::ToElement;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layers::qlora_linear::to_vec;

/// The learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

crate::named!(Schedule, PreservedScaling);

/// HF's `get_{constant,linear,cosine}_schedule_with_warmup`: the learning rate of optimizer
/// step `step` (0-based) of `total` steps, `warmup` of them warming up linearly from 0.
pub fn learning_rate(
    schedule: Schedule,
    base: f64,
    step: usize,
    total: usize,
    warmup: usize,
) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

/// The optimizer of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// torch's AdamW on every trainable parameter.
    #[default]
    Adamw,
    /// AdamW on the adapters' preconditioned gradients: ∇A·(BBᵀ + δI)⁻¹ and (AᵀA + δI)⁻¹·∇B
    /// (A `[in, r]`, B `[r, out]`), each from the factors before the step (Zhang & Pilanci).
    /// Under gradient descent this makes the update of L·R independent of how it is split
    /// between the factors; Adam's per-coordinate normalisation undoes that, and on STS-B it
    /// gained nothing over AdamW (docs/results.md).
    RiemannianAdamw,
}

crate::named!(OptimizerKind);

/// AdamW's constants (torch defaults: β = (0.9, 0.999), ε = 1e-8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// δ of the Riemannian preconditioning of the adapter factors; `None`: plain AdamW.
    pub precondition_delta: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            precondition_delta: None,
        }
    }
}

/// The two factors of one adapter: A `[in, r]` and B `[r, out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactorPair {
    pub a: ParamId,
    pub b: ParamId,
}

/// Where a per-component factor multiplies: SRR's gradient or update scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PreservedScaling {
    /// Multiply the preserved components' gradients by γ (the paper; nearly a no-op under
    /// AdamW, §12.3).
    Grad,
    /// Multiply the preserved components' AdamW step by γ (real attenuation).
    Update,
    /// No scaling.
    Off,
}

/// Factors on the rank components of one adapter factor, as a tensor that broadcasts against
/// it: `[1, r]` for A `[in, r]`, `[r, 1]` for B `[r, out]`.
#[derive(Debug, Clone)]
pub struct ComponentScale<B: Backend> {
    pub factors: Tensor<B, 2>,
    pub mode: PreservedScaling,
}

/// AdamW's state of one parameter, kept as `[rows, cols]` (a vector is `[1, n]`).
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 2>,
    pub exp_avg_sq: Tensor<B, 2>,
}

/// One AdamW update of `param` with gradient `grad` at step `t` (1-based), torch's order of
/// operations; `update_scale` multiplies the whole step (decay included) per component.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<B: Backend>(
    param: Tensor<B, 2>,
    grad: Tensor<B, 2>,
    moments: Option<Moments<B>>,
    t: u64,
    lr: f64,
    config: &AdamWConfig,
    decay: bool,
    update_scale: Option<&Tensor<B, 2>>,
) -> (Tensor<B, 2>, Moments<B>) {
    let Moments {
        exp_avg,
        exp_avg_sq,
    } = moments.unwrap_or_else(|| Moments {
        exp_avg: grad.zeros_like(),
        exp_avg_sq: grad.zeros_like(),
    });
    // exp_avg.lerp_(grad, 1 − β₁); exp_avg_sq.mul_(β₂).addcmul_(grad, grad, 1 − β₂)
    let exp_avg = exp_avg.clone() + (grad.clone() - exp_avg) * (1.0 - config.beta1);
    let exp_avg_sq = exp_avg_sq * config.beta2 + grad.clone() * grad * (1.0 - config.beta2);
    let bias_correction1 = 1.0 - config.beta1.powi(t as i32);
    let bias_correction2_sqrt = (1.0 - config.beta2.powi(t as i32)).sqrt();
    let denom = exp_avg_sq.clone().sqrt() / bias_correction2_sqrt + config.eps;
    let mut step = exp_avg.clone() / denom * (lr / bias_correction1);
    if decay && config.weight_decay != 0.0 {
        step = step + param.clone() * (lr * config.weight_decay);
    }
    if let Some(scale) = update_scale {
        step = step * scale.clone();
    }
    (
        param - step,
        Moments {
            exp_avg,
            exp_avg_sq,
        },
    )
}

/// What the optimizer knows of a trainable parameter.
#[derive(Debug, Clone)]
pub struct TrainableParam<B: Backend> {
    /// The module path (Burn field names joined by '.'), stable across runs: checkpoints key
    /// parameters and moments by it.
    pub path: String,
    pub dims: Vec<usize>,
    pub decay: bool,
    pub components: Option<ComponentScale<B>>,
}

/// The trainable parameters of a module, by id.
#[derive(Debug, Clone)]
pub struct ParamTable<B: Backend> {
    pub params: HashMap<ParamId, TrainableParam<B>>,
    /// Ids in module order, for deterministic iteration.
    pub order: Vec<ParamId>,
    /// The adapters' factor pairs, for the Riemannian preconditioning.
    pub pairs: Vec<FactorPair>,
}

impl<B: Backend> ParamTable<B> {
    /// Every parameter of `module` that requires a gradient, with `decay(path)` deciding weight
    /// decay, `components` the per-component scaling of adapter factors and `pairs` the
    /// adapters' factors.
    pub fn new<AB, M>(
        module: &M,
        decay: impl Fn(&str) -> bool,
        mut components: HashMap<ParamId, ComponentScale<B>>,
        pairs: Vec<FactorPair>,
    ) -> Self
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut collector = PathCollector {
            path: Vec::new(),
            found: Vec::new(),
        };
        module.visit(&mut collector);
        let mut params = HashMap::new();
        let mut order = Vec::new();
        for (id, path, dims) in collector.found {
            params.insert(
                id,
                TrainableParam {
                    decay: decay(&path),
                    components: components.remove(&id),
                    path,
                    dims,
                },
            );
            order.push(id);
        }
        ParamTable {
            params,
            order,
            pairs,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of trainable scalars.
    pub fn num_scalars(&self) -> usize {
        self.params
            .values()
            .map(|p| p.dims.iter().product::<usize>())
            .sum()
    }
}

struct PathCollector {
    path: Vec<String>,
    found: Vec<(ParamId, String, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PathCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.val().is_require_grad() {
            self.found
                .push((param.id, self.path.join("."), param.val().dims().to_vec()));
        }
    }
}

/// `[d0, …, dn]` → `[d0·…·d(n−1), dn]`.
fn to_2d<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, 2> {
    let dims = tensor.dims();
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    tensor.reshape([rows, cols])
}

/// Gradients of the trainable parameters, summed over micro-batches, as `[rows, cols]`.
#[derive(Debug, Clone)]
pub struct AccumulatedGrads<B: Backend> {
    grads: HashMap<ParamId, Tensor<B, 2>>,
}

impl<B: Backend> Default for AccumulatedGrads<B> {
    fn default() -> Self {
        AccumulatedGrads {
            grads: HashMap::new(),
        }
    }
}

impl<B: Backend> AccumulatedGrads<B> {
    /// Adds the gradients of one backward pass.
    pub fn add<AB, M>(&mut self, grads: AB::Gradients, module: &M, table: &ParamTable<B>)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut params = GradientsParams::from_grads(grads, module);
        let mut adder = GradAdder {
            params: &mut params,
            table,
            into: &mut self.grads,
        };
        module.visit(&mut adder);
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// The gradient of `id`, if it received one.
    pub fn get(&self, id: &ParamId) -> Option<&Tensor<B, 2>> {
        self.grads.get(id)
    }
}

struct GradAdder<'a, B: Backend> {
    params: &'a mut GradientsParams,
    table: &'a ParamTable<B>,
    into: &'a mut HashMap<ParamId, Tensor<B, 2>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradAdder<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if !self.table.params.contains_key(&param.id) {
            return;
        }
        if let Some(grad) = self.params.remove::<AB::InnerBackend, D>(param.id) {
            let grad = to_2d(grad);
            let sum = match self.into.remove(&param.id) {
                Some(previous) => previous + grad,
                None => grad,
            };
            self.into.insert(param.id, sum);
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The global gradient norm before clipping (after `grad`-mode scaling).
    pub grad_norm: f64,
    pub clipped: bool,
}

/// AdamW over a [`ParamTable`], with its moments keyed by parameter path.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Completed optimizer steps.
    pub step: u64,
    pub moments: HashMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// Scales, clips and applies `grads` to `module` at learning rate `lr`.
    pub fn step<AB, M>(
        &mut self,
        module: M,
        grads: AccumulatedGrads<B>,
        table: &ParamTable<B>,
        lr: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<(M, StepStats)>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut grads = grads.grads;
        for (id, grad) in grads.iter_mut() {
            if let Some(ComponentScale {
                factors,
                mode: PreservedScaling::Grad,
            }) = table.params.get(id).and_then(|p| p.components.as_ref())
            {
                *grad = grad.clone() * factors.clone();
            }
        }
        let (grad_norm, coefficient) = clip_coefficient(
            table.order.iter().filter_map(|id| grads.get(id)),
            max_grad_norm,
        )?;
        if let Some(c) = coefficient {
            for grad in grads.values_mut() {
                *grad = grad.clone() * c;
            }
        }
        if let Some(delta) = self.config.precondition_delta {
            precondition_factors::<AB, M>(&module, &mut grads, table, delta)?;
        }
        self.step += 1;
        let mut mapper = AdamWMapper {
            optimizer: self,
            table,
            grads,
            lr,
        };
        let module = module.map(&mut mapper);
        Ok((
            module,
            StepStats {
                grad_norm,
                clipped: coefficient.is_some_and(|c| c < 1.0),
            },
        ))
    }
}

/// The global L2 norm of `grads` and torch's clip factor max_norm/(norm + 1e-6) (capped at 1;
/// `None` without clipping). A non-finite norm is an error: the step would poison the weights.
pub fn clip_coefficient<'a, B: Backend>(
    grads: impl Iterator<Item = &'a Tensor<B, 2>>,
    max_norm: Option<f64>,
) -> Result<(f64, Option<f64>)> {
    let mut total: Option<Tensor<B, 1>> = None;
    for grad in grads {
        let squares = grad.clone().powi_scalar(2).sum();
        total = Some(match total {
            Some(t) => t + squares,
            None => squares,
        });
    }
    let norm = match total {
        Some(t) => f64::from(t.into_scalar().to_f32()).sqrt(),
        None => 0.0,
    };
    if !norm.is_finite() {
        return Err(Error::Numeric(format!(
            "the gradient norm is {norm}: the step is not taken"
        )));
    }
    Ok((norm, max_norm.map(|m| (m / (norm + 1e-6)).min(1.0))))
}

/// Riemannian preconditioning of each adapter's gradients (see
/// [`OptimizerKind::RiemannianAdamw`]), in place; the Gram matrices come from the factors' values
/// before the step. A pair with a missing gradient is left as it is.
fn precondition_factors<AB, M>(
    module: &M,
    grads: &mut HashMap<ParamId, Tensor<AB::InnerBackend, 2>>,
    table: &ParamTable<AB::InnerBackend>,
    delta: f64,
) -> Result<()>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let wanted: HashSet<ParamId> = table.pairs.iter().flat_map(|p| [p.a, p.b]).collect();
    let mut collector = ValueCollector {
        wanted: &wanted,
        found: HashMap::new(),
    };
    module.visit(&mut collector);
    let values = collector.found;
    let path = |id: &ParamId| table.params.get(id).map_or("?", |p| p.path.as_str());
    for pair in &table.pairs {
        let (Some(a), Some(b)) = (values.get(&pair.a), values.get(&pair.b)) else {
            continue;
        };
        let inverse_bbt = row_gram_inverse(b.clone(), delta)
            .map_err(|e| Error::Numeric(format!("{e} ({})", path(&pair.b))))?;
        let inverse_ata = row_gram_inverse(a.clone().transpose(), delta)
            .map_err(|e| Error::Numeric(format!("{e} ({})", path(&pair.a))))?;
        if let Some(grad) = grads.get_mut(&pair.a) {
            *grad = grad.clone().matmul(inverse_bbt);
        }
        if let Some(grad) = grads.get_mut(&pair.b) {
            *grad = inverse_ata.matmul(grad.clone());
        }
    }
    Ok(())
}

/// (XXᵀ + δI)⁻¹ for X `[r, n]` (r the adapter rank), formed and inverted in f64 on the host
/// (an f32 Gram matrix of a nearly rank-deficient factor can come out indefinite) and returned
/// in the tensor's precision.
fn row_gram_inverse<B: Backend>(x: Tensor<B, 2>, delta: f64) -> Result<Tensor<B, 2>> {
    let device = x.device();
    let [r, n] = x.dims();
    let values = to_vec(x)?;
    let row = |i: usize| &values[i * n..(i + 1) * n];
    let damped = Mat::from_fn(r, r, |i, j| {
        let dot: f64 = row(i)
            .iter()
            .zip(row(j))
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        dot + if i == j { delta } else { 0.0 }
    });
    let llt = damped.llt(Side::Lower).map_err(|_| {
        Error::Numeric(format!(
            "a factor's Gram matrix + {delta}·I is not positive definite"
        ))
    })?;
    let inverse = llt.inverse();
    let out: Vec<f32> = (0..r * r).map(|k| inverse[(k / r, k % r)] as f32).collect();
    Ok(Tensor::from_data(TensorData::new(out, [r, r]), &device))
}

struct ValueCollector<'a, B: Backend> {
    wanted: &'a HashSet<ParamId>,
    found: HashMap<ParamId, Tensor<B, 2>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for ValueCollector<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if self.wanted.contains(&param.id) {
            self.found.insert(param.id, to_2d(param.val().inner()));
        }
    }
}

struct AdamWMapper<'a, B: Backend> {
    optimizer: &'a mut AdamW<B>,
    table: &'a ParamTable<B>,
    grads: HashMap<ParamId, Tensor<B, 2>>,
    lr: f64,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for AdamWMapper<'_, AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let (Some(grad), Some(info)) = (self.grads.remove(&id), self.table.params.get(&id)) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims = tensor.dims();
        let update_scale = info
            .components
            .as_ref()
            .filter(|c| c.mode == PreservedScaling::Update)
            .map(|c| &c.factors);
        let optimizer = &mut *self.optimizer;
        let (updated, moments) = adamw_update(
            to_2d(tensor.inner()),
            grad,
            optimizer.moments.remove(&info.path),
            optimizer.step,
            self.lr,
            &optimizer.config,
            info.decay,
            update_scale,
        );
        optimizer.moments.insert(info.path.clone(), moments);
        let updated = Tensor::from_inner(updated.reshape(dims)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}
