//! What the training loop reports and asks as it goes, as pluggable parts: a [`MetricsSink`]
//! for the metrics log, a [`Progress`] for people watching, an [`Interrupter`] that can end a
//! run after any step, and a [`StepObserver`] that sees every step's batches and gradients.
//! [`TrainHooks::standard`] is what `qpeft train` uses.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{EpochRecord, LoopState};
use super::trace::StepObserver;
use crate::error::{Error, Result};

/// One event of a run, as the metrics log records it.
#[derive(Debug, Clone, Copy)]
pub enum TrainEvent<'a> {
    /// A fresh start.
    Start,
    /// A continuation from the checkpoint `from`, `global_step` steps in.
    Resume { from: &'a Path, global_step: usize },
    /// An optimizer step (every `train.log_every` steps).
    Step {
        /// 1-based.
        epoch: usize,
        step: usize,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
        clipped: bool,
        samples_per_second: f64,
    },
    /// A finished epoch with its dev scores.
    Epoch(&'a EpochRecord),
}

/// Where the metrics of a run go.
pub trait MetricsSink {
    fn record(&mut self, event: &TrainEvent<'_>) -> Result<()>;
}

/// No metrics.
impl MetricsSink for () {
    fn record(&mut self, _event: &TrainEvent<'_>) -> Result<()> {
        Ok(())
    }
}

/// `metrics.jsonl` in the run directory, one JSON object per event, appended to, so that every
/// attempt's lines stay: each opens with a `start` or `resume` line, and the lines of an attempt
/// stopped before its first checkpoint are followed by the next attempt's `start`.
pub struct JsonlMetrics {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlMetrics {
    pub fn open(run: &Path) -> Result<Self> {
        let path = run.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(JsonlMetrics { file, path })
    }
}

impl MetricsSink for JsonlMetrics {
    fn record(&mut self, event: &TrainEvent<'_>) -> Result<()> {
        let value = match *event {
            TrainEvent::Start => serde_json::json!({"type": "start", "global_step": 0}),
            TrainEvent::Resume { from, global_step } => serde_json::json!({
                "type": "resume",
                "from": from,
                "global_step": global_step,
            }),
            TrainEvent::Step {
                epoch,
                step,
                loss,
                learning_rate,
                grad_norm,
                clipped,
                samples_per_second,
            } => serde_json::json!({
                "type": "step",
                "epoch": epoch,
                "step": step,
                "loss": loss,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                "clipped": clipped,
                "samples_per_second": samples_per_second,
            }),
            TrainEvent::Epoch(record) => serde_json::json!({"type": "epoch", "record": record}),
        };
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Where a run stands after an optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Optimizer steps done, of `total_steps`.
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub learning_rate: f64,
    /// Over the whole run so far.
    pub samples_per_second: f64,
}

/// What people watching a run see. Every method does nothing unless overridden.
pub trait Progress {
    /// Before this process's first step: `done` of `total` steps are behind.
    fn start(&mut self, _done: usize, _total: usize) {}
    /// An epoch (1-based) begins or continues.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize) {}
    fn step(&mut self, _step: &StepProgress) {}
    /// A finished epoch, as one line.
    fn epoch_end(&mut self, _line: &str) {}
    /// The loop ended: `finished` is false when it stopped early or failed.
    fn end(&mut self, _finished: bool) {}
}

/// No progress.
impl Progress for () {}

/// A progress bar on a terminal. When stderr is not a terminal (a redirected log) the bar would
/// draw nothing, so plain lines are printed instead: the first step, every `every` steps and
/// every epoch.
pub struct ConsoleProgress {
    bar: Option<ProgressBar>,
    every: usize,
}

impl ConsoleProgress {
    pub fn new(every: usize) -> Self {
        ConsoleProgress {
            bar: std::io::stderr().is_terminal().then(|| {
                ProgressBar::new(0).with_style(
                    ProgressStyle::with_template(
                        "{prefix} {bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}",
                    )
                    .expect("valid progress template"),
                )
            }),
            every: every.max(1),
        }
    }
}

impl Progress for ConsoleProgress {
    fn start(&mut self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        }
    }

    fn step(&mut self, s: &StepProgress) {
        let status = format!(
            "loss {:.4} lr {:.2e} {:.1} samples/s",
            s.loss, s.learning_rate, s.samples_per_second
        );
        match &self.bar {
            Some(bar) => {
                bar.set_message(status);
                bar.inc(1);
            }
            None if s.step == 1 || s.step.is_multiple_of(self.every) => eprintln!(
                "epoch {}/{} step {}/{}: {status}",
                s.epoch, s.epochs, s.step, s.total_steps
            ),
            None => {}
        }
    }

    fn epoch_end(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn end(&mut self, finished: bool) {
        if let Some(bar) = &self.bar {
            if finished {
                bar.finish_and_clear();
            } else {
                bar.abandon();
            }
        }
    }
}

/// Decides, after each optimizer step and any checkpoint it was due, whether the run stops
/// there. A stopped run ends like a killed one: what followed its last checkpoint is not saved,
/// and `qpeft train --resume` continues from that checkpoint.
pub trait Interrupter {
    fn should_stop(&self, state: &LoopState) -> bool;
}

/// Never stops.
impl Interrupter for () {
    fn should_stop(&self, _state: &LoopState) -> bool {
        false
    }
}

/// Stops once this many optimizer steps are done (`qpeft train --dump-batches`).
#[derive(Debug, Clone, Copy)]
pub struct StopAfterSteps(pub usize);

impl Interrupter for StopAfterSteps {
    fn should_stop(&self, state: &LoopState) -> bool {
        state.global_step >= self.0
    }
}

/// The pluggable parts of a training loop.
pub struct TrainHooks<'a> {
    pub metrics: Box<dyn MetricsSink + 'a>,
    pub progress: Box<dyn Progress + 'a>,
    pub interrupter: Box<dyn Interrupter + 'a>,
    pub observer: Box<dyn StepObserver + 'a>,
}

/// Plain progress lines every this many steps when stderr is redirected.
pub const PLAIN_PROGRESS_EVERY: usize = 20;

impl<'a> TrainHooks<'a> {
    /// What `qpeft train` uses: `metrics.jsonl` in `run`, [`ConsoleProgress`], no interrupter
    /// and no observer.
    pub fn standard(run: &Path) -> Result<Self> {
        Ok(TrainHooks {
            metrics: Box::new(JsonlMetrics::open(run)?),
            progress: Box::new(ConsoleProgress::new(PLAIN_PROGRESS_EVERY)),
            ..TrainHooks::silent()
        })
    }

    /// No metrics log, no progress, no interrupter, no observer.
    pub fn silent() -> Self {
        TrainHooks {
            metrics: Box::new(()),
            progress: Box::new(()),
            interrupter: Box::new(()),
            observer: Box::new(()),
        }
    }
}
