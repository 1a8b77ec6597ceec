//! The training path against PyTorch, step by step: each case under
//! `tests/fixtures/train-equiv/` (a recipe on the tiny BERT with a committed init checkpoint,
//! dropout off) is trained by `qpeft train --dump-batches`, and its per-step losses (1e-5), its
//! first step's gradients and its final adapter factors and head (1e-4, relative to each tensor's
//! largest entry) must agree with transformers + torch AdamW replaying the same batches from the
//! same start (`scripts/check_training.py`, run by `tests/fixtures/make_training_fixtures.sh`,
//! which also wrote the committed batches and starting values). The `-riemannian` cases train
//! with `train.optimizer = "riemannian-adamw"`: the reference preconditions each adapter's
//! gradients in float64 by its own code; after 4 steps their tensors differ from the plain AdamW
//! cases' by 1e-2 (QERA) to 1.5 (QLoRA) relative, so a preconditioner ignored or mis-oriented
//! fails here.
//!
//! QLoRA's cases get 3e-4 for the final tensors: its B starts at 0, so AdamW's first updates of
//! B and A are nearly sign(gradient)·lr, and entries whose gradient is near 0 move by ±lr on f32
//! rounding alone. That floor is f32's, not qpeft's: replayed in float64, PyTorch's own f32 run
//! is 6e-5 to 8e-5 away on these cases, qpeft's 6e-5 to 1.2e-4 (the other cases: both ≤ 6e-6).

mod common;

use std::path::Path;

use common::{Golden, fixture, glue_dir};
use qpeft::train::trace::StepTrace;
use safetensors::SafeTensors;

const STEPS: &str = "4";

fn names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut names: Vec<String> = SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// max |a − b| / max |b|.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    f64::from(common::max_abs_diff(a, b) / scale)
}

struct CaseResult {
    name: String,
    loss_err: f64,
    grad_err: f64,
    tensor_err: f64,
    tolerance: f64,
    clipped: bool,
}

fn check_case(case: &Path, tmp: &Path) -> CaseResult {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let recipe_text = std::fs::read_to_string(case.join("recipe.toml")).unwrap();
    let recipe: toml::Table = toml::from_str(&recipe_text).unwrap();
    let init = recipe["adapter"]["init"].as_str().unwrap();
    // The init folder: the recipe's `model.init_checkpoint` names one, else the initializer's.
    let init_dir = recipe
        .get("model")
        .and_then(|m| m.get("init_checkpoint"))
        .and_then(|c| c.as_str())
        .unwrap_or(init);
    let run = tmp.join(&name);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .arg("train")
        .arg(case.join("recipe.toml"))
        .arg("--set")
        .arg(format!(
            "model.name={:?}",
            fixture("tiny-bert").display().to_string()
        ))
        .arg("--set")
        .arg(format!(
            "model.init_checkpoint={:?}",
            fixture("train-equiv/inits")
                .join(init_dir)
                .display()
                .to_string()
        ))
        .args(["--dump-batches", STEPS, "--out"])
        .arg(&run)
        .arg("--data-dir")
        .arg(glue_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dump = run.join("dump");
    let committed = case.join("dump");

    // The same batches in the same order, and the same starting point, as PyTorch replayed.
    let batches = Golden::open(&dump.join("batches.safetensors"));
    let expected_batches = Golden::open(&committed.join("batches.safetensors"));
    let batch_names = names(&committed.join("batches.safetensors"));
    assert_eq!(
        names(&dump.join("batches.safetensors")),
        batch_names,
        "{name}"
    );
    for tensor in &batch_names {
        if tensor.ends_with(".labels") && recipe["data"]["task"].as_str() == Some("stsb") {
            assert_eq!(
                batches.f32(tensor),
                expected_batches.f32(tensor),
                "{name}: {tensor}"
            );
        } else {
            assert_eq!(
                batches.i64(tensor),
                expected_batches.i64(tensor),
                "{name}: {tensor}"
            );
        }
    }
    let initial = Golden::open(&dump.join("initial.safetensors"));
    let expected_initial = Golden::open(&committed.join("initial.safetensors"));
    let tensor_names = names(&committed.join("initial.safetensors"));
    assert_eq!(
        names(&dump.join("initial.safetensors")),
        tensor_names,
        "{name}"
    );
    for tensor in &tensor_names {
        let (shape, ours) = initial.f32(tensor);
        let (expected_shape, theirs) = expected_initial.f32(tensor);
        assert_eq!(shape, expected_shape, "{name}: {tensor}");
        assert!(relative(&ours, &theirs) < 1e-6, "{name}: initial {tensor}");
    }

    // Per-step losses and the final trainable tensors against PyTorch's.
    let trace: StepTrace =
        serde_json::from_str(&std::fs::read_to_string(dump.join("trace.json")).unwrap()).unwrap();
    let expected = Golden::open(&case.join("expected.safetensors"));
    let (_, torch_losses) = expected.f64("losses");
    assert_eq!(trace.steps.len(), torch_losses.len(), "{name}");
    let mut loss_err: f64 = 0.0;
    for (step, torch) in trace.steps.iter().zip(&torch_losses) {
        loss_err = loss_err.max((step.loss - torch).abs() / torch.abs().max(1e-12));
    }
    let last = Golden::open(&dump.join("final.safetensors"));
    let gradients = Golden::open(&dump.join("gradients.safetensors"));
    // Only the gradients of step 1 and of each epoch's first step (the cases cross an epoch
    // boundary): a whole-run dump would otherwise hold every step's.
    let epochs = trace.recipe["train"]["epochs"].as_u64().unwrap() as usize;
    let steps_per_epoch = trace.total_steps / epochs;
    let mut kept: Vec<String> = trace
        .steps
        .iter()
        .map(|s| s.step)
        .filter(|s| (s - 1) % steps_per_epoch == 0)
        .flat_map(|s| tensor_names.iter().map(move |t| format!("step-{s}.{t}")))
        .collect();
    kept.sort();
    assert!(kept.len() > tensor_names.len(), "{name}: no epoch boundary");
    assert_eq!(
        names(&dump.join("gradients.safetensors")),
        kept,
        "{name}: the dumped gradients"
    );
    let (mut tensor_err, mut grad_err, mut moved) = (0f64, 0f64, 0f64);
    for tensor in &tensor_names {
        let (_, ours) = last.f32(tensor);
        let (_, theirs) = expected.f32(&format!("final.{tensor}"));
        let (_, start) = expected_initial.f32(tensor);
        tensor_err = tensor_err.max(relative(&ours, &theirs));
        moved = moved.max(relative(&theirs, &start));
        let (_, ours) = gradients.f32(&format!("step-1.{tensor}"));
        let (_, theirs) = expected.f32(&format!("grad1.{tensor}"));
        if theirs.iter().any(|&g| g != 0.0) {
            grad_err = grad_err.max(relative(&ours, &theirs));
        } else {
            assert!(
                ours.iter().all(|&g| g == 0.0),
                "{name}: step-1 gradient of {tensor}"
            );
        }
    }
    // The comparison means something only if training moved the tensors well past 1e-4.
    assert!(moved > 1e-2, "{name}: the tensors moved only {moved}");
    CaseResult {
        tolerance: if init == "qlora" { 3e-4 } else { 1e-4 },
        clipped: trace.steps.iter().any(|s| s.clipped),
        name,
        loss_err,
        grad_err,
        tensor_err,
    }
}

#[test]
fn training_steps_match_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fixture("train-equiv");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("recipe.toml").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 14,
        "{} cases in {}",
        cases.len(),
        root.display()
    );
    let mut failures = Vec::new();
    let mut clipping_cases = 0;
    for case in &cases {
        let r = check_case(case, tmp.path());
        println!(
            "{}: loss {:.1e}, step-1 gradients {:.1e}, final tensors {:.1e} (relative), clipped {}",
            r.name, r.loss_err, r.grad_err, r.tensor_err, r.clipped
        );
        clipping_cases += usize::from(r.clipped);
        if r.loss_err > 1e-5 || r.grad_err > 1e-4 || r.tensor_err > r.tolerance {
            failures.push(r.name);
        }
    }
    assert!(failures.is_empty(), "disagree with PyTorch: {failures:?}");
    assert!(
        clipping_cases >= 5,
        "only {clipping_cases} cases clipped a gradient"
    );
}
