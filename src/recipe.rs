//! Recipe files (`recipes/<task>.toml`): the typed description of one QPEFT run, in five
//! sections — `[model]`, `[quant]`, `[adapter]`, `[train]`, `[data]` — each field defaulting to
//! the SRR/QERA GLUE protocol (docs/algorithms.md §13). Unknown keys are errors that list the valid
//! ones; `--set section.key=value` overrides any field; [`Recipe::validate`] rejects values
//! that cannot work and names the key. `docs/recipes.md` documents every field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::data::Task;
use crate::error::{Error, Result};
use crate::eval::metrics::MnliMain;
use crate::layers::DropoutPlacement;
use crate::model::DEFAULT_MODEL;
use crate::model::bert::LAYER_LINEARS;
use crate::quant::grid::{GridKind, ScaleDtype};
use crate::quant::solve::QuantMethod;
use crate::reconstruct::init::{InitName, KRule};
use crate::reconstruct::lowrank::FactorSplit;
use crate::train::optim::{OptimizerKind, PreservedScaling, Schedule};
use crate::train::trainer::GammaForm;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    pub model: ModelSection,
    pub quant: QuantSection,
    pub adapter: AdapterSection,
    pub train: TrainSection,
    pub data: DataSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A hub id or a local model directory.
    pub name: String,
    /// Start from this init checkpoint (`qpeft init --out`) instead of building one.
    pub init_checkpoint: Option<PathBuf>,
    /// Overrides every dropout probability of the encoder and the head (`config.json`'s
    /// hidden, attention and classifier dropout); absent keeps the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            name: DEFAULT_MODEL.to_string(),
            init_checkpoint: None,
            dropout: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantSection {
    pub method: QuantMethod,
    pub bits: u8,
    pub grid: GridKind,
    /// Group (MXINT block) size along the input dimension; 0 for one grid per row.
    pub group: usize,
    /// Calibration text for S = R_xx^{1/2} and data-aware quantizers: `task` (the recipe's own
    /// task's training pairs), another GLUE task's, `glue` (pooled generic GLUE text: CoLA,
    /// SST-2, MRPC, STS-B and RTE in equal shares) or a text file (the papers use WikiText-2,
    /// which is not available here).
    pub calib: String,
    pub calib_samples: usize,
    pub calib_max_length: usize,
    pub calib_seed: u64,
    /// Quantize the embedding tables too, per row at these bits (e.g. 8); absent: full precision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<u8>,
    /// The grids' scale precision, `f32` or `f16` (uniform and NF grids; absent: f32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_dtype: Option<ScaleDtype>,
}

/// `quant.calib`'s value for the recipe's own task: on STS-B it calibrates QERA's init 27 points
/// better (fine-tuned dev score, 3 seeds) than RTE's pairs, the old default (docs/results.md).
pub const OWN_TASK_CALIBRATION: &str = "task";

impl Default for QuantSection {
    fn default() -> Self {
        QuantSection {
            method: QuantMethod::Rtn,
            bits: 2,
            grid: GridKind::MxInt,
            group: 32,
            calib: OWN_TASK_CALIBRATION.to_string(),
            calib_samples: 128,
            calib_max_length: 128,
            calib_seed: 0,
            embeddings: None,
            scale_dtype: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSection {
    pub init: InitName,
    /// SRR's k rule: `probe` (the paper), `prerelease`, `exact`, or a number.
    pub k_rule: KRule,
    pub joint_refit: bool,
    pub loftq_iters: usize,
    /// How Σ is shared between L and R (§11.1); absent: `sqrt` (`InitName::default_split`). The split
    /// leaves L·R unchanged but sets the factors' scales, which AdamW's steps are taken on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor_split: Option<FactorSplit>,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub dropout_placement: DropoutPlacement,
    /// Target linears below `encoder.layer.N.` (default: the six of every layer).
    pub targets: Vec<String>,
    /// SRR's scaling of the preserved block: `update` (the default: it trains best, docs/results.md),
    /// `grad` (the paper's, nearly a no-op under AdamW, §12.3) or `off`.
    pub preserved_scaling: PreservedScaling,
    pub gamma: f64,
    pub gamma_form: GammaForm,
    pub train_biases: bool,
    pub train_layer_norms: bool,
    pub train_pooler: bool,
}

impl Default for AdapterSection {
    fn default() -> Self {
        AdapterSection {
            init: InitName::Srr,
            k_rule: KRule::Probe,
            joint_refit: false,
            loftq_iters: 5,
            factor_split: None,
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            dropout_placement: DropoutPlacement::Input,
            targets: LAYER_LINEARS.iter().map(|s| s.to_string()).collect(),
            preserved_scaling: PreservedScaling::Update,
            gamma: 0.1,
            gamma_form: GammaForm::Constant,
            train_biases: false,
            train_layer_norms: false,
            train_pooler: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub learning_rate: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub epochs: usize,
    pub max_length: usize,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    /// Global gradient-norm clipping; 0 turns it off (the protocol does not clip).
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub seed: u64,
    pub eval_batch_size: usize,
    /// Also checkpoint every this many optimizer steps (0: after each epoch only).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// How MNLI enters the GLUE average: `matched` or `mean-of-both`.
    pub mnli_main: MnliMain,
    /// Training batches are sorted by length inside shuffled windows of this many batches
    /// (1: plain shuffling).
    pub length_group_window: usize,
    /// Each batch is sorted by length and computed in this many passes whose gradients add up
    /// to the whole batch's: the same optimizer step with less padding.
    pub length_split: usize,
    /// `adamw`, or `riemannian-adamw`: AdamW on Riemannian-preconditioned adapter gradients.
    pub optimizer: OptimizerKind,
    /// δ of the Riemannian preconditioner (Gram + δI), used with `riemannian-adamw`.
    pub riemannian_delta: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            learning_rate: 3e-4,
            batch_size: 64,
            grad_accum: 1,
            epochs: 5,
            max_length: 256,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.0,
            max_grad_norm: 0.0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 42,
            eval_batch_size: 128,
            checkpoint_every: 0,
            log_every: 10,
            mnli_main: MnliMain::Matched,
            length_group_window: 1,
            length_split: 4,
            optimizer: OptimizerKind::Adamw,
            riemannian_delta: 1e-6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The GLUE task (required).
    pub task: Option<Task>,
    /// The GLUE folder (default: `--data-dir`, `$GLUE_DIR`, then `datasets/glue`).
    pub dir: Option<PathBuf>,
    /// Train on a seeded random subset of this many examples.
    pub max_train_samples: Option<usize>,
}

/// The names of the fields of a section, read from its `Deserialize` impl.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("field names only"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("field names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(&mut fields);
    fields.0
}

/// The sections and, for each, its valid keys.
pub fn valid_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("model", field_names::<ModelSection>()),
        ("quant", field_names::<QuantSection>()),
        ("adapter", field_names::<AdapterSection>()),
        ("train", field_names::<TrainSection>()),
        ("data", field_names::<DataSection>()),
    ]
}

/// The `section.key` of the `key = value` line of `text` holding byte `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..].lines().next()?.split_once('=')?;
    let key = key.trim();
    let section = before[..line_start].lines().rev().find_map(|line| {
        line.trim()
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
    })?;
    (!key.is_empty()).then(|| format!("{}.{key}", section.trim()))
}

/// A `--set` value as TOML (`2`, `1e-4`, `true`, `["a", "b"]`), or else as a bare string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Keys added to `[train]` after runs were written without them, with the value those runs
/// trained with: batches sorted by length in windows of 50, each computed in one pass.
const LEGACY_TRAIN_KEYS: [(&str, &str); 2] = [("length_group_window", "50"), ("length_split", "1")];

impl Recipe {
    /// Reads the resolved recipe a run directory holds (`qpeft train` writes every field). A key
    /// it lacks was added later: the run trained with that key's old behaviour, not today's
    /// default, so that value is read (and `qpeft glue` does not take the run for one of the
    /// new protocol).
    pub fn load_resolved(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table = toml::from_str(&text).unwrap_or_default();
        let train = table.get("train").and_then(toml::Value::as_table);
        let legacy: Vec<String> = LEGACY_TRAIN_KEYS
            .iter()
            .filter(|(key, _)| train.is_none_or(|t| !t.contains_key(*key)))
            .map(|(key, value)| format!("train.{key}={value}"))
            .collect();
        Self::parse(&text, path, &legacy)
    }

    /// Reads `path` and applies `overrides` (`section.key=value`), then validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses recipe `text` (from `origin`) with `overrides`, then validates.
    pub fn parse(text: &str, origin: &Path, overrides: &[String]) -> Result<Self> {
        let invalid = |message: String| Error::InvalidConfig {
            path: origin.to_path_buf(),
            message,
        };
        // Parsing the file as the typed recipe first gives errors with line and column, and
        // the `section.key` they are in.
        toml::from_str::<Recipe>(text).map_err(|e| {
            let message = e.to_string().trim_end().to_string();
            match e.span().and_then(|span| key_at(text, span.start)) {
                Some(key) => invalid(format!("{key}: {message}")),
                None => invalid(message),
            }
        })?;
        let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut table, assignment)?;
        }
        let recipe = Recipe::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        recipe.validate().map_err(invalid)?;
        Ok(recipe)
    }

    /// The calibration source `qpeft init` gets: `quant.calib`, with `task` resolved to
    /// `data.task`.
    pub fn calibration_source(&self) -> &str {
        match (self.quant.calib.as_str(), self.data.task) {
            (OWN_TASK_CALIBRATION, Some(task)) => task.name(),
            (calib, _) => calib,
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Internal(format!("writing the recipe: {e}")))
    }

    /// The task named by `data.task`.
    pub fn task(&self) -> Result<Task> {
        self.data
            .task
            .ok_or_else(|| Error::Config("data.task is missing: name a GLUE task".into()))
    }

    /// Checks every value that no type can rule out; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let task = self.task().map_err(|e| e.to_string())?;
        if task == Task::Ax {
            return Err(
                "data.task: AX has no training data; it is scored by a model fine-tuned on MNLI"
                    .into(),
            );
        }
        let q = &self.quant;
        let a = &self.adapter;
        let t = &self.train;
        let check = |ok: bool, key: &str, expected: &str, value: String| {
            if ok {
                Ok(())
            } else {
                Err(format!("{key} = {value}: expected {expected}"))
            }
        };
        if q.method != QuantMethod::None {
            check(
                (2..=8).contains(&q.bits),
                "quant.bits",
                "2 to 8 bits",
                q.bits.to_string(),
            )?;
            if matches!(q.grid, GridKind::MxInt | GridKind::NormalFloat) {
                check(
                    q.group > 0,
                    "quant.group",
                    "a positive MXINT or NF block size",
                    q.group.to_string(),
                )?;
            }
            if let Some(dtype) = q.scale_dtype {
                check(
                    q.grid != GridKind::MxInt || dtype == ScaleDtype::F32,
                    "quant.scale_dtype",
                    "f32 or no value with quant.grid = \"mxint\" (its blocks store an 8-bit exponent, not a scale)",
                    dtype.to_string(),
                )?;
            }
            check(
                q.calib_samples > 0,
                "quant.calib_samples",
                "at least 1",
                q.calib_samples.to_string(),
            )?;
            if let Some(bits) = q.embeddings {
                check(
                    (2..=8).contains(&bits),
                    "quant.embeddings",
                    "2 to 8 bits",
                    bits.to_string(),
                )?;
            }
        } else if let Some(bits) = q.embeddings {
            return Err(format!(
                "quant.embeddings = {bits}: expected no value with quant.method = \"none\" (full-precision LoRA keeps every weight in full precision)"
            ));
        } else if let Some(dtype) = q.scale_dtype {
            return Err(format!(
                "quant.scale_dtype = \"{dtype}\": expected no value with quant.method = \"none\" (nothing is quantized)"
            ));
        }
        match (q.method, a.init) {
            (QuantMethod::None, InitName::Lora) => {}
            (QuantMethod::None, init) => {
                return Err(format!(
                    "adapter.init = \"{init}\" needs a quantized base: set quant.method (e.g. rtn), or adapter.init = \"lora\" for full-precision LoRA"
                ));
            }
            (_, InitName::Lora) => {
                return Err("adapter.init = \"lora\" is full-precision LoRA: set quant.method = \"none\" (on a quantized base PEFT's init is \"qlora\")".into());
            }
            _ => {}
        }
        if let (Some(split), InitName::Lora | InitName::Qlora) = (a.factor_split, a.init) {
            return Err(format!(
                "adapter.factor_split = \"{split}\" applies to the SVD initializers, not adapter.init = \"{}\" (its L·R starts at 0)",
                a.init
            ));
        }
        check(
            a.rank > 0,
            "adapter.rank",
            "a positive rank",
            a.rank.to_string(),
        )?;
        check(
            a.alpha.is_finite() && a.alpha > 0.0,
            "adapter.alpha",
            "a positive number",
            a.alpha.to_string(),
        )?;
        check(
            (0.0..1.0).contains(&a.dropout),
            "adapter.dropout",
            "a probability in [0, 1)",
            a.dropout.to_string(),
        )?;
        if let Some(p) = self.model.dropout {
            check(
                (0.0..1.0).contains(&p),
                "model.dropout",
                "a probability in [0, 1)",
                p.to_string(),
            )?;
        }
        check(
            t.length_split > 0,
            "train.length_split",
            "at least 1 pass per batch",
            t.length_split.to_string(),
        )?;
        check(
            t.riemannian_delta.is_finite() && t.riemannian_delta > 0.0,
            "train.riemannian_delta",
            "a positive number (the preconditioner inverts Gram + δI)",
            t.riemannian_delta.to_string(),
        )?;
        check(
            t.length_group_window > 0,
            "train.length_group_window",
            "at least 1 batch (1 is plain shuffling)",
            t.length_group_window.to_string(),
        )?;
        check(
            (0.0..=1.0).contains(&a.gamma),
            "adapter.gamma",
            "a factor in [0, 1]",
            a.gamma.to_string(),
        )?;
        check(
            !a.targets.is_empty(),
            "adapter.targets",
            "at least one target",
            "[]".into(),
        )?;
        for target in &a.targets {
            check(
                LAYER_LINEARS.contains(&target.as_str()),
                "adapter.targets",
                &format!("names among {}", LAYER_LINEARS.join(", ")),
                format!("{target:?}"),
            )?;
        }
        if let KRule::Fixed(k) = a.k_rule {
            check(
                k <= a.rank,
                "adapter.k_rule",
                &format!("at most the rank {}", a.rank),
                k.to_string(),
            )?;
        }
        check(
            t.learning_rate.is_finite() && t.learning_rate > 0.0,
            "train.learning_rate",
            "a positive number",
            t.learning_rate.to_string(),
        )?;
        check(
            t.batch_size > 0,
            "train.batch_size",
            "at least 1",
            t.batch_size.to_string(),
        )?;
        check(
            t.grad_accum > 0,
            "train.grad_accum",
            "at least 1",
            t.grad_accum.to_string(),
        )?;
        check(
            t.epochs > 0,
            "train.epochs",
            "at least 1",
            t.epochs.to_string(),
        )?;
        check(
            t.max_length >= 8,
            "train.max_length",
            "at least 8 tokens",
            t.max_length.to_string(),
        )?;
        check(
            (0.0..1.0).contains(&t.warmup_ratio),
            "train.warmup_ratio",
            "a fraction in [0, 1)",
            t.warmup_ratio.to_string(),
        )?;
        check(
            t.max_grad_norm >= 0.0,
            "train.max_grad_norm",
            "0 (off) or a positive norm",
            t.max_grad_norm.to_string(),
        )?;
        check(
            t.weight_decay >= 0.0,
            "train.weight_decay",
            "a non-negative number",
            t.weight_decay.to_string(),
        )?;
        check(
            (0.0..1.0).contains(&t.beta1),
            "train.beta1",
            "a value in [0, 1)",
            t.beta1.to_string(),
        )?;
        check(
            (0.0..1.0).contains(&t.beta2),
            "train.beta2",
            "a value in [0, 1)",
            t.beta2.to_string(),
        )?;
        check(
            t.eps > 0.0,
            "train.eps",
            "a positive number",
            t.eps.to_string(),
        )?;
        check(
            t.eval_batch_size > 0,
            "train.eval_batch_size",
            "at least 1",
            t.eval_batch_size.to_string(),
        )?;
        if let Some(n) = self.data.max_train_samples {
            check(n > 0, "data.max_train_samples", "at least 1", n.to_string())?;
        }
        Ok(())
    }

    /// Checks the rank against the smallest adapted layer `min(out, in)`.
    pub fn validate_rank(&self, smallest_dimension: usize) -> Result<()> {
        if self.adapter.rank > smallest_dimension {
            return Err(Error::Config(format!(
                "adapter.rank = {}: expected at most min(out, in) = {smallest_dimension} of the target layers",
                self.adapter.rank
            )));
        }
        Ok(())
    }
}

/// Applies `section.key=value` to `table`, rejecting unknown sections and keys by name.
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let invalid = |message: String| Error::Config(format!("--set {assignment}: {message}"));
    let (path, value) = assignment
        .split_once('=')
        .ok_or_else(|| invalid("expected section.key=value".into()))?;
    let (section, key) = path
        .trim()
        .split_once('.')
        .ok_or_else(|| invalid("expected section.key=value".into()))?;
    let sections = valid_keys();
    let (_, keys) = sections
        .iter()
        .find(|(name, _)| *name == section)
        .ok_or_else(|| {
            let names: Vec<&str> = sections.iter().map(|(n, _)| *n).collect();
            invalid(format!(
                "unknown section '{section}'; expected one of {}",
                names.join(", ")
            ))
        })?;
    if !keys.contains(&key) {
        return Err(invalid(format!(
            "unknown key '{key}' in [{section}]; valid keys: {}",
            keys.join(", ")
        )));
    }
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let toml::Value::Table(section_table) = entry else {
        return Err(invalid(format!("'{section}' is not a table in the recipe")));
    };
    section_table.insert(key.to_string(), parse_value(value.trim()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_recipe_without_a_later_key_reads_the_old_behaviour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipe.toml");
        std::fs::write(&path, "[data]\ntask = \"rte\"\n[train]\nepochs = 3\n").unwrap();
        let old = Recipe::load_resolved(&path).unwrap();
        assert_eq!(
            (old.train.length_group_window, old.train.length_split),
            (50, 1)
        );
        let fresh = Recipe::load(&path, &[]).unwrap();
        assert_eq!(
            (fresh.train.length_group_window, fresh.train.length_split),
            (1, 4)
        );
        std::fs::write(&path, fresh.to_toml().unwrap()).unwrap();
        assert_eq!(Recipe::load_resolved(&path).unwrap(), fresh);
    }

    #[test]
    fn srr_scales_the_preserved_update_unless_told_grad() {
        // `update` is the measured default (docs/results.md, "SRR's γ mode"); a saved run writes
        // its mode out, so a run of the old default (`grad`) resumes as `grad`.
        let origin = Path::new("r.toml");
        let fresh = Recipe::parse("[data]\ntask = \"cola\"\n", origin, &[]).unwrap();
        assert_eq!(fresh.adapter.preserved_scaling, PreservedScaling::Update);
        assert!(
            fresh
                .to_toml()
                .unwrap()
                .contains("preserved_scaling = \"update\"")
        );
        let grad = ["adapter.preserved_scaling=grad".to_string()];
        let paper = Recipe::parse("[data]\ntask = \"cola\"\n", origin, &grad).unwrap();
        assert_eq!(paper.adapter.preserved_scaling, PreservedScaling::Grad);
        // Read back the way a resumed run reads its recipe.
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("recipe.toml");
        std::fs::write(&saved, paper.to_toml().unwrap()).unwrap();
        let resumed = Recipe::load_resolved(&saved).unwrap();
        assert_eq!(resumed.adapter.preserved_scaling, PreservedScaling::Grad);
    }

    #[test]
    fn calibration_defaults_to_the_recipes_own_task() {
        let origin = Path::new("r.toml");
        let recipe = Recipe::parse("[data]\ntask = \"mrpc\"\n", origin, &[]).unwrap();
        assert_eq!(recipe.quant.calib, "task");
        assert_eq!(recipe.calibration_source(), "mrpc");
        let other = Recipe::parse(
            "[data]\ntask = \"mrpc\"\n[quant]\ncalib = \"rte\"\n",
            origin,
            &[],
        )
        .unwrap();
        assert_eq!(other.calibration_source(), "rte");
    }

    #[test]
    fn f16_scales_are_refused_where_there_is_no_scale() {
        let origin = Path::new("r.toml");
        let parse = |quant: &str| {
            Recipe::parse(
                &format!("[data]\ntask = \"rte\"\n[quant]\n{quant}"),
                origin,
                &[],
            )
        };
        let nf = parse("grid = \"nf\"\ngroup = 64\nscale_dtype = \"f16\"\n").unwrap();
        assert_eq!(nf.quant.scale_dtype, Some(ScaleDtype::F16));
        let err = parse("scale_dtype = \"f16\"\n").unwrap_err().to_string();
        assert!(
            err.contains("r.toml")
                && err.contains("quant.scale_dtype = f16")
                && err.contains("mxint"),
            "{err}"
        );
        let err = Recipe::parse(
            "[data]\ntask = \"rte\"\n[quant]\nmethod = \"none\"\nscale_dtype = \"f16\"\n[adapter]\ninit = \"lora\"\n",
            origin,
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("quant.scale_dtype"), "{err}");
    }

    #[test]
    fn field_names_come_from_serde() {
        let keys = valid_keys();
        assert_eq!(keys[3].0, "train");
        assert!(keys[3].1.contains(&"learning_rate"));
        assert!(keys[2].1.contains(&"preserved_scaling"));
    }
}
