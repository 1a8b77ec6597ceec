//! GLUE metrics against scikit-learn and scipy (fixture: `tests/fixtures/make_metric_fixtures.py`).

mod common;

use qpeft::eval::metrics::{accuracy, f1_binary, matthews_corrcoef, pearson, spearman};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn close(name: &str, metric: &str, ours: f64, reference: f64) {
    assert!(
        (ours - reference).abs() <= TOLERANCE,
        "{name}: {metric} = {ours}, scikit-learn/scipy say {reference}"
    );
}

#[test]
fn metrics_match_scikit_learn_and_scipy() {
    let text = std::fs::read_to_string(common::fixture("metrics.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let reference = |metric: &str| case[metric].as_f64();
        match case["kind"].as_str().unwrap() {
            "classification" => {
                let ints = |key: &str| -> Vec<usize> {
                    case[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect()
                };
                let (p, l) = (ints("predictions"), ints("labels"));
                close(
                    name,
                    "accuracy",
                    accuracy(&p, &l),
                    reference("accuracy").unwrap(),
                );
                close(
                    name,
                    "mcc",
                    matthews_corrcoef(&p, &l),
                    reference("mcc").unwrap(),
                );
                checked += 2;
                if let Some(f1) = reference("f1") {
                    close(name, "f1", f1_binary(&p, &l), f1);
                    checked += 1;
                }
            }
            "regression" => {
                let floats = |key: &str| -> Vec<f64> {
                    case[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                };
                let (p, l) = (floats("predictions"), floats("labels"));
                close(
                    name,
                    "pearson",
                    pearson(&p, &l),
                    reference("pearson").unwrap(),
                );
                close(
                    name,
                    "spearman",
                    spearman(&p, &l),
                    reference("spearman").unwrap(),
                );
                checked += 2;
            }
            other => panic!("unknown case kind {other}"),
        }
    }
    assert_eq!(checked, 26);
}

#[test]
fn correlations_of_a_constant_vector_are_nan_as_in_scipy() {
    assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    assert!(spearman(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0]).is_nan());
}
