//! GLUE metrics and the GLUE score, computed in f64.
//!
//! Conventions follow scikit-learn and scipy (what the GLUE leaderboard used): binary F1 on
//! the positive class 1, Matthews correlation 0 when undefined, Spearman with average ranks for
//! ties, Pearson/Spearman NaN when a vector is constant.

use std::collections::BTreeMap;

use crate::data::Task;
use crate::error::{Error, Result};

/// Fraction of equal entries.
pub fn accuracy(predictions: &[usize], labels: &[usize]) -> f64 {
    check_lengths(predictions.len(), labels.len());
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len() as f64
}

/// Counts (tp, fp, fn, tn) with class 1 positive.
fn confusion(predictions: &[usize], labels: &[usize]) -> (f64, f64, f64, f64) {
    check_lengths(predictions.len(), labels.len());
    let (mut tp, mut fp, mut fneg, mut tn) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &l) in predictions.iter().zip(labels) {
        match (p == 1, l == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fneg += 1.0,
            (false, false) => tn += 1.0,
        }
    }
    (tp, fp, fneg, tn)
}

/// Binary F1 of class 1; 0 when there are no true positives (scikit-learn's zero_division=0).
pub fn f1_binary(predictions: &[usize], labels: &[usize]) -> f64 {
    let (tp, fp, fneg, _) = confusion(predictions, labels);
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fneg)
    }
}

/// Matthews correlation coefficient, multiclass form (scikit-learn's `matthews_corrcoef`);
/// 0 when the denominator vanishes.
pub fn matthews_corrcoef(predictions: &[usize], labels: &[usize]) -> f64 {
    check_lengths(predictions.len(), labels.len());
    let classes = predictions
        .iter()
        .chain(labels)
        .copied()
        .max()
        .map_or(0, |m| m + 1);
    let mut predicted = vec![0.0f64; classes];
    let mut actual = vec![0.0f64; classes];
    let mut correct = 0.0;
    for (&p, &l) in predictions.iter().zip(labels) {
        predicted[p] += 1.0;
        actual[l] += 1.0;
        if p == l {
            correct += 1.0;
        }
    }
    let n = labels.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_ytyp = correct * n - dot(&actual, &predicted);
    let cov_ypyp = n * n - dot(&predicted, &predicted);
    let cov_ytyt = n * n - dot(&actual, &actual);
    if cov_ypyp * cov_ytyt == 0.0 {
        0.0
    } else {
        cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
    }
}

/// Pearson correlation; NaN if either vector is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    check_lengths(x.len(), y.len());
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mean_x, b - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks 1..n, ties sharing their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: Pearson of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

fn check_lengths(a: usize, b: usize) {
    assert_eq!(a, b, "prediction and label vectors differ in length");
    assert!(a > 0, "metrics need at least one example");
}

/// Predictions of one task's dev split(s), in the split's example order.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskPredictions {
    Classes {
        predictions: Vec<usize>,
        labels: Vec<usize>,
    },
    Scores {
        predictions: Vec<f64>,
        labels: Vec<f64>,
    },
    /// MNLI: matched and mismatched dev sets.
    Mnli {
        matched: (Vec<usize>, Vec<usize>),
        mismatched: (Vec<usize>, Vec<usize>),
    },
}

/// A task's metrics by name (`accuracy`, `f1`, `mcc`, `pearson`, `spearman`, `accuracy_mm`)
/// and its main score.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskScore {
    pub task: Task,
    pub metrics: BTreeMap<&'static str, f64>,
    /// What the GLUE table reports for the task (see [`task_score`]).
    pub main: f64,
}

/// How MNLI enters the GLUE average (spec §13, "Choice: MNLI in the average").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum MnliMain {
    /// Matched accuracy (the reference's primary metric; recommended).
    #[default]
    Matched,
    /// Mean of matched and mismatched accuracy.
    MeanOfBoth,
}

crate::named!(MnliMain);

/// The task's metrics and main score: CoLA MCC; MRPC and QQP mean(accuracy, F1); STS-B
/// mean(Pearson, Spearman); MNLI matched accuracy or mean(m, mm); the others accuracy.
pub fn task_score(task: Task, predictions: &TaskPredictions, mnli: MnliMain) -> Result<TaskScore> {
    let mismatch = || {
        Error::InvalidData(format!(
            "{task}: predictions of the wrong kind for this task"
        ))
    };
    let mut metrics = BTreeMap::new();
    let main = match (task, predictions) {
        (
            Task::Mnli,
            TaskPredictions::Mnli {
                matched,
                mismatched,
            },
        ) => {
            let m = accuracy(&matched.0, &matched.1);
            let mm = accuracy(&mismatched.0, &mismatched.1);
            metrics.insert("accuracy", m);
            metrics.insert("accuracy_mm", mm);
            match mnli {
                MnliMain::Matched => m,
                MnliMain::MeanOfBoth => (m + mm) / 2.0,
            }
        }
        (
            Task::Stsb,
            TaskPredictions::Scores {
                predictions,
                labels,
            },
        ) => {
            let p = pearson(predictions, labels);
            let s = spearman(predictions, labels);
            metrics.insert("pearson", p);
            metrics.insert("spearman", s);
            (p + s) / 2.0
        }
        (
            Task::Cola,
            TaskPredictions::Classes {
                predictions,
                labels,
            },
        ) => {
            let mcc = matthews_corrcoef(predictions, labels);
            metrics.insert("mcc", mcc);
            metrics.insert("accuracy", accuracy(predictions, labels));
            mcc
        }
        (
            Task::Mrpc | Task::Qqp,
            TaskPredictions::Classes {
                predictions,
                labels,
            },
        ) => {
            let acc = accuracy(predictions, labels);
            let f1 = f1_binary(predictions, labels);
            metrics.insert("accuracy", acc);
            metrics.insert("f1", f1);
            (acc + f1) / 2.0
        }
        (
            Task::Sst2 | Task::Qnli | Task::Rte | Task::Wnli,
            TaskPredictions::Classes {
                predictions,
                labels,
            },
        ) => {
            let acc = accuracy(predictions, labels);
            metrics.insert("accuracy", acc);
            acc
        }
        (Task::Ax, _) => {
            return Err(Error::Config(
                "AX has no labels: it is scored by the GLUE server".into(),
            ));
        }
        _ => return Err(mismatch()),
    };
    Ok(TaskScore {
        task,
        metrics,
        main,
    })
}

/// The GLUE score: the unweighted mean of the tasks' main scores, in %.
pub fn glue_score(scores: &[TaskScore]) -> f64 {
    100.0 * scores.iter().map(|s| s.main).sum::<f64>() / scores.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]),
            [4.0, 1.0, 4.0, 2.0, 4.0]
        );
    }

    #[test]
    fn task_scores_combine_metrics_as_glue_does() {
        let classes = TaskPredictions::Classes {
            predictions: vec![1, 1, 0, 0],
            labels: vec![1, 0, 0, 0],
        };
        // accuracy 3/4; F1 = 2·1 / (2·1 + 1 + 0) = 2/3
        let mrpc = task_score(Task::Mrpc, &classes, MnliMain::Matched).unwrap();
        assert!((mrpc.main - (0.75 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
        let rte = task_score(Task::Rte, &classes, MnliMain::Matched).unwrap();
        assert_eq!(rte.main, 0.75);
        let mnli = TaskPredictions::Mnli {
            matched: (vec![0, 1, 2, 2], vec![0, 1, 2, 0]),
            mismatched: (vec![0, 0], vec![0, 1]),
        };
        let matched = task_score(Task::Mnli, &mnli, MnliMain::Matched).unwrap();
        assert_eq!((matched.main, matched.metrics["accuracy_mm"]), (0.75, 0.5));
        let both = task_score(Task::Mnli, &mnli, MnliMain::MeanOfBoth).unwrap();
        assert_eq!(both.main, 0.625);
        assert!(
            (glue_score(&[mrpc.clone(), rte.clone()]) - 100.0 * (mrpc.main + 0.75) / 2.0).abs()
                < 1e-12
        );
        assert!(task_score(Task::Stsb, &classes, MnliMain::Matched).is_err());
    }
}
