//! `--resume`: a killed run continued from its last checkpoint ends exactly as the
//! uninterrupted run, In its own test binary
//! because the CPU backend's random stream (dropout) is one per process.

mod common;

use std::path::Path;

use burn_autodiff::Autodiff;
use burn_ndarray::NdArray;
use common::toy::{files, toy_data, toy_recipe, toy_setup};
use qpeft::recipe::Recipe;

use qpeft::pipeline::run::{build_model, train_config};
use qpeft::train::checkpoint::LoadedCheckpoint;
use qpeft::train::hooks::{StopAfterSteps, TrainHooks};
use qpeft::train::trainer::{latest_checkpoint, train};

type Ad = Autodiff<NdArray<f32>>;

/// A run stopped after 4 steps (its last checkpoint at step 3, so step 4 is lost as in a
/// kill) and resumed ends with the same metrics and the same weights, bit for bit, as the
/// uninterrupted run; dropout is on, so the dropout stream must resume too.
#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (init, glue) = toy_setup(tmp.path());
    let text = toy_recipe(
        &init,
        "checkpoint_every = 3\nwarmup_ratio = 0.2\nmax_grad_norm = 1.0\ngrad_accum = 2\n",
    )
    .replace("epochs = 30\n", "epochs = 2\n")
    .replace("\"constant\"", "\"cosine\"");
    let recipe = Recipe::parse(&text, Path::new("toy.toml"), &[]).unwrap();
    let data = toy_data(&recipe, &glue);
    let device = Default::default();
    let config = train_config(&recipe);

    let straight = tmp.path().join("straight");
    std::fs::create_dir_all(&straight).unwrap();
    let model = build_model::<Ad>(&recipe, files(&recipe), &device)
        .unwrap()
        .model;
    let hooks = TrainHooks::standard(&straight).unwrap();
    let full = train(model, &data, &config, &straight, None, hooks, &device).unwrap();
    assert!(full.finished);

    let killed = tmp.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    let model = build_model::<Ad>(&recipe, files(&recipe), &device)
        .unwrap()
        .model;
    let stopping = TrainHooks {
        interrupter: Box::new(StopAfterSteps(4)),
        ..TrainHooks::standard(&killed).unwrap()
    };
    let partial = train(model, &data, &config, &killed, None, stopping, &device).unwrap();
    assert!(!partial.finished);
    let checkpoint = latest_checkpoint(&killed).unwrap().unwrap();
    assert!(checkpoint.ends_with("step-3"), "{}", checkpoint.display());
    let loaded = LoadedCheckpoint::open(&checkpoint).unwrap();
    let model = build_model::<Ad>(&recipe, files(&recipe), &device)
        .unwrap()
        .model;
    let resumed = train(
        model,
        &data,
        &config,
        &killed,
        Some(&loaded),
        TrainHooks::standard(&killed).unwrap(),
        &device,
    )
    .unwrap();
    assert!(resumed.finished);

    assert_eq!(resumed.state.epochs, full.state.epochs);
    assert_eq!(resumed.state.global_step, full.state.global_step);
    let weights =
        |run: &Path| std::fs::read(run.join("checkpoints/epoch-2/trainable.safetensors")).unwrap();
    assert!(
        weights(&killed) == weights(&straight),
        "trainable weights differ"
    );
    let moments =
        |run: &Path| std::fs::read(run.join("checkpoints/epoch-2/optimizer.safetensors")).unwrap();
    assert!(
        moments(&killed) == moments(&straight),
        "optimizer state differs"
    );
}
