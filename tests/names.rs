//! One name per concept: every named enum of the library prints (`Display`), parses on the
//! command line (`clap::ValueEnum`) and reads/writes in recipes and reports (serde) under the
//! same name, for every variant.

use clap::ValueEnum;
use qpeft::adapters::export::ExportFormat;
use qpeft::eval::metrics::MnliMain;
use qpeft::layers::DropoutPlacement;
use qpeft::pipeline::bench::BenchMode;
use qpeft::pipeline::glue::LrSelection;
use qpeft::quant::bench::BenchSolver;
use qpeft::quant::grid::GridKind;
use qpeft::quant::solve::QuantMethod;
use qpeft::quant::spec::{CoreqAlphaMode, RescompMode};
use qpeft::reconstruct::init::{InitName, Initializer, KRule};
use qpeft::reconstruct::lowrank::FactorSplit;
use qpeft::train::optim::{OptimizerKind, PreservedScaling, Schedule};
use qpeft::train::trainer::GammaForm;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn one_name<T>(expected: &[&str])
where
    T: ValueEnum + Serialize + DeserializeOwned + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    let names: Vec<String> = T::value_variants().iter().map(T::to_string).collect();
    assert_eq!(names, expected);
    for value in T::value_variants() {
        let name = value.to_string();
        assert_eq!(serde_json::to_value(value).unwrap(), name.as_str());
        let read: T = serde_json::from_value(serde_json::json!(name)).unwrap();
        assert_eq!(&read, value);
        assert_eq!(&T::from_str(&name, false).unwrap(), value);
    }
}

#[test]
fn display_serde_and_clap_agree() {
    one_name::<GridKind>(&["asym", "sym", "quarot", "mxint", "nf"]);
    one_name::<FactorSplit>(&["sigma-left", "sqrt", "sigma-right"]);
    one_name::<OptimizerKind>(&["adamw", "riemannian-adamw"]);
    one_name::<ExportFormat>(&["dense", "peft"]);
    one_name::<Schedule>(&["constant", "linear", "cosine"]);
    one_name::<PreservedScaling>(&["grad", "update", "off"]);
    one_name::<GammaForm>(&["constant", "per-rank"]);
    one_name::<DropoutPlacement>(&["input", "residual"]);
    one_name::<MnliMain>(&["matched", "mean-of-both"]);
    one_name::<CoreqAlphaMode>(&["fixed", "scheduled", "sampled", "closed", "alternate"]);
    one_name::<RescompMode>(&["snapshot", "allw", "org"]);
    one_name::<BenchMode>(&["train", "eval"]);
    one_name::<BenchSolver>(&["gptq", "coreq"]);
    one_name::<LrSelection>(&["mean", "first-seed"]);
    one_name::<QuantMethod>(&[
        "none", "rtn", "gptq", "gptaq", "rescomp", "coreq", "kcoreq", "qronos",
    ]);
    one_name::<InitName>(&[
        "lora",
        "qlora",
        "loftq",
        "zeroquant-v2",
        "lqer",
        "qera-approx",
        "qera-exact",
        "lqlora",
        "srr",
    ]);
}

/// Reports and init checkpoint headers describe an initializer by its name and the settings
/// that change the result, never by its `Debug` form.
#[test]
fn initializers_print_their_name_and_settings() {
    let printed = [
        Initializer::Qlora,
        Initializer::Loftq { iters: 5 },
        Initializer::Lqer { batch_max: true },
        Initializer::Srr {
            rule: KRule::Probe,
            joint_refit: false,
        },
        Initializer::Srr {
            rule: KRule::Fixed(3),
            joint_refit: true,
        },
    ]
    .map(|init| init.to_string());
    assert_eq!(
        printed,
        [
            "qlora",
            "loftq (T = 5)",
            "lqer (batch max)",
            "srr (k: probe)",
            "srr (k: 3, joint refit)"
        ]
    );
}
