//! `qpeft data fetch` from the hub, offline through a seeded hub cache: nyu-mll/glue parquet
//! files (fixtures: `tests/fixtures/make_parquet_fixtures.py`) become glue_data files that
//! load exactly like the originals.

mod common;

use std::path::Path;

use qpeft::data::hub::{GLUE_HUB_REPO, fetch_from_hub, hub_file};
use qpeft::data::manifest::{Checksum, FileStatus, verify};
use qpeft::data::{Label, Split, Task, load};
use qpeft::model::HubOptions;

/// Lays the fixture parquet files out as hf-hub's cache does for the dataset repo.
fn seeded_cache(root: &Path, files: &[(Task, Split)]) -> HubOptions {
    let repo = root.join(format!("datasets--{}", GLUE_HUB_REPO.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    for &(task, split) in files {
        let file = hub_file(task, split);
        let target = repo.join("snapshots").join(revision).join(&file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(common::fixture("hub-glue").join(&file), target).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    HubOptions {
        cache_dir: root.to_path_buf(),
        offline: true,
    }
}

#[test]
fn hub_parquet_becomes_glue_files_equal_to_the_originals() {
    let files = [
        (Task::Cola, Split::Train),
        (Task::Stsb, Split::Dev),
        (Task::Rte, Split::Test),
        (Task::Mrpc, Split::Dev),
        (Task::Mnli, Split::DevMatched),
        (Task::Wnli, Split::Dev),
    ];
    let cache = tempfile::tempdir().unwrap();
    let options = seeded_cache(cache.path(), &files);
    let dest = tempfile::tempdir().unwrap();
    let written = fetch_from_hub(&options, dest.path(), &files).unwrap();
    assert_eq!(
        written.iter().map(|(_, rows)| rows).sum::<usize>(),
        4 * 60 + 2 + 71
    );

    let original = common::glue_dir();
    for &(task, split) in &files[..4] {
        let converted = load(dest.path(), task, split).unwrap().examples;
        let reference = load(&original, task, split).unwrap().examples;
        assert_eq!(converted.len(), 60);
        for (c, r) in converted.iter().zip(&reference) {
            let what = format!("{task} {split} row {}", r.id);
            assert_eq!(
                (c.id, &c.text_a, &c.text_b),
                (r.id, &r.text_a, &r.text_b),
                "{what}"
            );
            match (c.label, r.label) {
                // The hub stores STS-B scores as float32: equal to the file's value as f32.
                (Some(Label::Score(a)), Some(Label::Score(b))) => assert_eq!(a, b, "{what}"),
                (a, b) => assert_eq!(a, b, "{what}"),
            }
        }
    }
    let mnli = load(dest.path(), Task::Mnli, Split::DevMatched)
        .unwrap()
        .examples;
    assert_eq!(mnli[0].label, Some(Label::Class(1)));
    assert_eq!(mnli[1].label, Some(Label::Class(2)));
    assert_eq!(
        mnli[1].text_a,
        "This site includes a list of all award winners."
    );

    // Converted files cannot carry the originals' sha256: verification checks their rows and
    // says so, rather than failing on the sum.
    let checks = verify(dest.path(), &[Task::Wnli, Task::Rte]);
    let status = |split| {
        &checks
            .iter()
            .find(|c| c.entry.split == split && c.entry.task == Task::Wnli)
            .unwrap()
            .status
    };
    assert_eq!(
        status(Split::Dev),
        &FileStatus::Verified {
            rows: 71,
            checksum: Checksum::Converted
        }
    );
    let rte = &checks
        .iter()
        .find(|c| c.entry.task == Task::Rte && c.entry.split == Split::Test)
        .unwrap()
        .status;
    assert_eq!(rte, &FileStatus::Mismatch("60 rows, expected 3000".into()));
    assert_eq!(
        load(dest.path(), Task::Wnli, Split::Dev).unwrap().examples,
        load(&original, Task::Wnli, Split::Dev).unwrap().examples
    );
}

#[test]
fn a_file_missing_from_an_offline_cache_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let options = seeded_cache(cache.path(), &[]);
    let dest = tempfile::tempdir().unwrap();
    let err = fetch_from_hub(&options, dest.path(), &[(Task::Sst2, Split::Train)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nyu-mll/glue/sst2/train-00000-of-00001.parquet"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(err.contains("--from"), "{err}");
}
