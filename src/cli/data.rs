//! `qpeft data fetch` and `qpeft data verify`.

use std::path::PathBuf;

use qpeft::data::Task;
use qpeft::data::glue::glue_dir;
use qpeft::data::hub::{GLUE_HUB_REPO, fetch_from_hub};
use qpeft::data::manifest::{Checksum, FetchStatus, FileStatus, fetch_from_mirror, verify};
use qpeft::model::HubOptions;

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Fill the GLUE folder (--data-dir, else $GLUE_DIR, else datasets/glue): from the
    /// Hugging Face hub (nyu-mll/glue parquet, through the hub cache), or from a mirror folder.
    Fetch {
        /// Tasks to fetch (default: all).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<Task>,
        /// A folder in the glue_data layout to copy from, instead of the hub.
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Check every GLUE file present against the committed manifest (sha256 and row counts).
    Verify {
        /// Tasks whose files must all be present (default: check whatever is present).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<Task>,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// `--data-dir`, shared by every command that reads GLUE.
#[derive(clap::Args, Debug, Clone)]
pub struct DataDirArg {
    /// The GLUE folder (default: $GLUE_DIR, else datasets/glue).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    pub fn dir(&self) -> PathBuf {
        glue_dir(self.data_dir.as_deref())
    }
}

fn or_all(tasks: Vec<Task>) -> Vec<Task> {
    if tasks.is_empty() {
        Task::ALL.to_vec()
    } else {
        tasks
    }
}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Fetch {
            tasks,
            from: None,
            data,
        } => {
            let dest = data.dir();
            let files: Vec<(Task, qpeft::data::Split)> = or_all(tasks)
                .into_iter()
                .flat_map(|task| task.splits().iter().map(move |&split| (task, split)))
                .collect();
            for (path, rows) in fetch_from_hub(&HubOptions::from_env(), &dest, &files)? {
                println!("{path:<28} {rows:>8} rows  converted from {GLUE_HUB_REPO}");
            }
            println!("GLUE folder: {}", dest.display());
            Ok(())
        }
        DataCommand::Fetch {
            tasks,
            from: Some(from),
            data,
        } => {
            let dest = data.dir();
            let explicit = !tasks.is_empty();
            let tasks = or_all(tasks);
            // With no --tasks, a task the mirror lacks is reported, not an error.
            let wanted: Vec<Task> = if explicit {
                tasks
            } else {
                tasks
                    .into_iter()
                    .filter(|t| from.join(t.dir_name()).is_dir())
                    .collect()
            };
            let outcome = fetch_from_mirror(&from, &dest, &wanted)?;
            for (entry, status) in &outcome {
                let word = match status {
                    FetchStatus::Copied => "copied",
                    FetchStatus::Present => "present",
                    FetchStatus::NotInMirror => "not in mirror",
                };
                println!("{:<28} {word}", entry.path);
            }
            let skipped: Vec<&str> = Task::ALL
                .iter()
                .filter(|t| !wanted.contains(t))
                .map(|t| t.name())
                .collect();
            if !skipped.is_empty() {
                println!("not in the mirror: {}", skipped.join(", "));
            }
            println!("GLUE folder: {}", dest.display());
            Ok(())
        }
        DataCommand::Verify { tasks, data } => {
            let dir = data.dir();
            let required = !tasks.is_empty();
            let checks = verify(&dir, &or_all(tasks));
            let mut failures = 0;
            let mut verified = 0;
            println!("{:<28} {:>8}  status", "file", "rows");
            for check in &checks {
                let (rows, status) = match &check.status {
                    FileStatus::Verified { rows, checksum } => {
                        verified += 1;
                        let what = match checksum {
                            Checksum::Matched => "ok (rows, sha256)",
                            Checksum::Unknown => "ok (rows; no sha256 known)",
                            Checksum::Converted => "ok (rows; converted from the hub, no sha256)",
                        };
                        (rows.to_string(), what.to_string())
                    }
                    FileStatus::Missing => {
                        if required {
                            failures += 1;
                        }
                        ("-".into(), "missing".to_string())
                    }
                    FileStatus::Mismatch(why) => {
                        failures += 1;
                        ("-".into(), format!("MISMATCH: {why}"))
                    }
                };
                println!("{:<28} {rows:>8}  {status}", check.entry.path);
            }
            if verified == 0 {
                anyhow::bail!("no GLUE file found in {}", dir.display());
            }
            if failures > 0 {
                anyhow::bail!(
                    "{failures} GLUE file(s) in {} failed verification",
                    dir.display()
                );
            }
            println!("{verified} file(s) verified in {}", dir.display());
            Ok(())
        }
    }
}
