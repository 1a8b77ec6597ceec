//! A training run killed (SIGKILL) at random moments — while it sets up, trains, evaluates or
//! writes a checkpoint — and continued each time with `qpeft train --resume` ends with the same
//! per-epoch metrics, bit for bit, as a run never interrupted: no kill leaves a checkpoint that
//! loads wrong. Processes, not threads: a kill is the real thing. The counts are printed
//! (`cargo test --test kill -- --nocapture`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::toy::{toy_recipe, toy_setup};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KILLS: usize = 20;

fn report_epochs(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("report.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["epochs"].clone()
}

fn train(args: &[&std::ffi::OsStr], glue: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qpeft"));
    command
        .arg("train")
        .args(args)
        .arg("--data-dir")
        .arg(glue)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn runs_killed_at_random_moments_resume_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (init, glue) = toy_setup(tmp.path());
    let recipe = tmp.path().join("toy.toml");
    let text = toy_recipe(&init, "checkpoint_every = 2\n").replace("epochs = 30\n", "epochs = 4\n");
    std::fs::write(&recipe, text).unwrap();

    let straight = tmp.path().join("straight");
    let started = Instant::now();
    let output = train(
        &[recipe.as_os_str(), "--out".as_ref(), straight.as_os_str()],
        &glue,
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let span = started.elapsed();
    let want = report_epochs(&straight);

    // Rounds of kill-and-resume until KILLS kills: a round ends when an attempt outlives its
    // random deadline (drawn over the uninterrupted run's duration) and finishes the run.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut kills, mut fresh_starts, mut attempts, mut rounds) = (0, 0, 0, 0);
    while kills < KILLS {
        rounds += 1;
        let killed = tmp.path().join(format!("killed-{rounds}"));
        loop {
            attempts += 1;
            let resume = killed.join("recipe.toml").is_file();
            if !resume {
                // Killed before the run directory held its recipe: nothing to continue.
                let _ = std::fs::remove_dir_all(&killed);
                fresh_starts += 1;
            }
            let mut command = match resume {
                true => train(&["--resume".as_ref(), killed.as_os_str()], &glue),
                false => train(
                    &[recipe.as_os_str(), "--out".as_ref(), killed.as_os_str()],
                    &glue,
                ),
            };
            let mut child = command.spawn().unwrap();
            let deadline = Duration::from_micros(rng.random_range(0..span.as_micros() as u64));
            let started = Instant::now();
            let finished = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if started.elapsed() >= deadline {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    kills += 1;
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            if let Some(status) = finished {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                assert!(status.success(), "attempt {attempts} failed: {stderr}");
                break;
            }
        }
        assert_eq!(report_epochs(&killed), want, "round {rounds}");
    }
    println!(
        "kill test: {kills} SIGKILLs at random moments over {attempts} attempts in {rounds} runs ({} killed before the run directory held its recipe, so started again); every run resumed to the uninterrupted run's metrics",
        fresh_starts - rounds
    );
}
