//! Fuzzing the GLUE reader: random bytes and mutated real rows, parsed under every task's
//! layout, must give rows or an error, never a panic. Bounded in cases and time; seeded.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use qpeft::data::glue::parse_split;
use qpeft::data::{Label, LabelKind, Task};
use qpeft::seed::substream_rng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const MAX_CASES: usize = 200_000;
const MAX_TIME: Duration = Duration::from_secs(10);

/// Bytes that matter to the format, and some that break UTF-8.
const INTERESTING: &[u8] = b"\t\n\r\"0159.-e \xEF\xBB\xBF\xC3\xFF\x80";

fn mutate(rng: &mut ChaCha8Rng, base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if bytes.is_empty() {
            0
        } else {
            rng.random_range(0..bytes.len())
        };
        match rng.random_range(0..6) {
            0 if !bytes.is_empty() => bytes[at] = rng.random(),
            1 => bytes.insert(at, INTERESTING[rng.random_range(0..INTERESTING.len())]),
            2 if !bytes.is_empty() => {
                let end = (at + rng.random_range(1..40)).min(bytes.len());
                bytes.drain(at..end);
            }
            3 => bytes.truncate(at),
            4 => {
                // Duplicate a span (a line, a field) elsewhere.
                let end = (at + rng.random_range(1..80)).min(bytes.len());
                let span = bytes[at..end].to_vec();
                let to = rng.random_range(0..=bytes.len());
                bytes.splice(to..to, span);
            }
            _ => {
                let label = [
                    "",
                    "2",
                    "-1",
                    "nan",
                    "inf",
                    "5.0001",
                    "entailment",
                    "neutral",
                    "1e3",
                ];
                bytes.extend_from_slice(label[rng.random_range(0..label.len())].as_bytes());
            }
        }
    }
    bytes
}

/// Parses `bytes` as every (task, split); checks that what parses is well-formed.
fn parse_everywhere(bytes: &[u8]) -> usize {
    let mut parsed = 0;
    for task in Task::ALL {
        for &split in task.splits() {
            if let Ok(examples) = parse_split(bytes, task, split, Path::new("fuzz.tsv")) {
                parsed += 1;
                assert!(!examples.is_empty());
                for e in &examples {
                    match (task.label_kind(), e.label) {
                        (_, None) => assert!(split.is_test()),
                        (LabelKind::Classes(names), Some(Label::Class(c))) => {
                            assert!(c < names.len())
                        }
                        (LabelKind::Score { min, max }, Some(Label::Score(s))) => {
                            assert!(s.is_finite() && (min..=max).contains(&s))
                        }
                        (kind, label) => panic!("{task}: label {label:?} for {kind:?}"),
                    }
                }
            }
        }
    }
    parsed
}

#[test]
fn the_reader_never_panics_on_random_or_mutated_input() {
    let dir = common::glue_dir();
    // Heads of real files of every layout family.
    let seeds: Vec<Vec<u8>> = [
        "CoLA/dev.tsv",
        "SST-2/train.tsv",
        "MRPC/train.tsv",
        "STS-B/dev.tsv",
        "RTE/dev.tsv",
        "QNLI/test.tsv",
    ]
    .iter()
    .map(|f| {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let cut = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(5)
            .map_or(bytes.len(), |(i, _)| i + 1);
        bytes[..cut].to_vec()
    })
    .collect();
    let mut rng = substream_rng(2026, "glue-fuzz");
    let started = Instant::now();
    let (mut cases, mut accepted) = (0, 0);
    while cases < MAX_CASES && started.elapsed() < MAX_TIME {
        let input = if cases % 4 == 0 {
            let len = rng.random_range(0..300);
            (0..len)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        INTERESTING[rng.random_range(0..INTERESTING.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect()
        } else {
            mutate(&mut rng, &seeds[cases % seeds.len()])
        };
        accepted += parse_everywhere(&input);
        cases += 1;
    }
    println!(
        "fuzzed {cases} inputs in {:?}; {accepted} (input, layout) pairs parsed",
        started.elapsed()
    );
    assert!(cases >= 1000, "too few cases in the time bound: {cases}");
    assert!(
        accepted > 0,
        "no mutated input parsed: the mutations are too destructive to test acceptance"
    );
}
