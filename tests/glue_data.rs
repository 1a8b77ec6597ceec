//! GLUE loaders on the real data (row counts, contents), on fixture files in the official
//! formats of the tasks not available here (QQP, MNLI, QNLI train), and on malformed input.

mod common;

use std::path::Path;

use qpeft::data::batch::TokenizedSplit;
use qpeft::data::glue::parse_split;
use qpeft::data::manifest::{Checksum, FileStatus, verify};
use qpeft::data::{Label, Split, Task, load};
use qpeft::model::{DEFAULT_MODEL, HubOptions, PretrainedModel, resolve_model};

/// Official row counts of every split available here.
const OFFICIAL_ROWS: &[(Task, Split, usize)] = &[
    (Task::Cola, Split::Train, 8551),
    (Task::Cola, Split::Dev, 1043),
    (Task::Cola, Split::Test, 1063),
    (Task::Sst2, Split::Train, 67349),
    (Task::Sst2, Split::Dev, 872),
    (Task::Sst2, Split::Test, 1821),
    (Task::Mrpc, Split::Train, 3668),
    (Task::Mrpc, Split::Dev, 408),
    (Task::Mrpc, Split::Test, 1725),
    (Task::Stsb, Split::Train, 5749),
    (Task::Stsb, Split::Dev, 1500),
    (Task::Stsb, Split::Test, 1379),
    (Task::Qnli, Split::Dev, 5463),
    (Task::Qnli, Split::Test, 5463),
    (Task::Rte, Split::Train, 2490),
    (Task::Rte, Split::Dev, 277),
    (Task::Rte, Split::Test, 3000),
    (Task::Wnli, Split::Train, 635),
    (Task::Wnli, Split::Dev, 71),
    (Task::Wnli, Split::Test, 146),
    (Task::Ax, Split::Test, 1104),
];

#[test]
fn every_available_split_has_its_official_row_count() {
    let dir = common::glue_dir();
    for &(task, split, rows) in OFFICIAL_ROWS {
        let dataset = load(&dir, task, split).unwrap_or_else(|e| panic!("{task} {split}: {e:#}"));
        assert_eq!(dataset.examples.len(), rows, "{task} {split}");
        let labelled = dataset.examples.iter().all(|e| e.label.is_some());
        assert_eq!(
            labelled,
            !split.is_test(),
            "{task} {split}: labels only outside test"
        );
        let pairs = dataset.examples.iter().all(|e| e.text_b.is_some());
        assert_eq!(
            pairs,
            !matches!(task, Task::Cola | Task::Sst2),
            "{task} {split}: pair-ness"
        );
    }
}

#[test]
fn the_mirror_verifies_against_the_manifest() {
    let dir = common::glue_dir();
    let checks = verify(&dir, &Task::ALL);
    let verified = checks
        .iter()
        .filter(|c| {
            matches!(
                c.status,
                FileStatus::Verified {
                    checksum: Checksum::Matched,
                    ..
                }
            )
        })
        .count();
    assert_eq!(verified, OFFICIAL_ROWS.len());
    for check in &checks {
        assert!(
            !matches!(check.status, FileStatus::Mismatch(_)),
            "{:?}",
            check
        );
    }
}

fn class_counts(task: Task, split: Split) -> Vec<usize> {
    let dataset = load(&common::glue_dir(), task, split).unwrap();
    let mut counts = vec![0; task.num_outputs()];
    for e in &dataset.examples {
        match e.label {
            Some(Label::Class(c)) => counts[c] += 1,
            other => panic!("{task} {split}: label {other:?}"),
        }
    }
    counts
}

/// Expected values computed independently with Python's csv module (quoting off).
#[test]
fn contents_match_an_independent_reading() {
    let dir = common::glue_dir();
    assert_eq!(class_counts(Task::Cola, Split::Train), [2528, 6023]);
    assert_eq!(class_counts(Task::Cola, Split::Dev), [322, 721]);
    assert_eq!(class_counts(Task::Sst2, Split::Dev), [428, 444]);
    assert_eq!(class_counts(Task::Mrpc, Split::Train), [1194, 2474]);
    assert_eq!(class_counts(Task::Rte, Split::Dev), [146, 131]);
    assert_eq!(class_counts(Task::Qnli, Split::Dev), [2702, 2761]);
    assert_eq!(class_counts(Task::Wnli, Split::Train), [323, 312]);

    let cola = load(&dir, Task::Cola, Split::Train).unwrap();
    assert_eq!(
        cola.examples[0].text_a,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
    assert_eq!(cola.examples[0].line, 1, "CoLA train has no header");
    let cola_dev = load(&dir, Task::Cola, Split::Dev).unwrap();
    assert_eq!(
        cola_dev.examples.last().unwrap().text_a,
        "John talked to Bill about himself."
    );

    let sst2 = load(&dir, Task::Sst2, Split::Dev).unwrap();
    assert_eq!(
        sst2.examples[0].text_a, "it 's a charming and often affecting journey . ",
        "trailing space kept"
    );

    // MRPC train starts with a byte-order mark before its header; its fields hold bare quotes.
    let mrpc = load(&dir, Task::Mrpc, Split::Train).unwrap();
    assert!(
        mrpc.examples[0]
            .text_a
            .starts_with("Amrozi accused his brother , whom he called \" the witness \" ,")
    );
    assert_eq!(mrpc.examples[0].label, Some(Label::Class(1)));

    let stsb = load(&dir, Task::Stsb, Split::Dev).unwrap();
    let first = &stsb.examples[0];
    assert_eq!(first.text_a, "A man with a hard hat is dancing.");
    assert_eq!(
        first.text_b.as_deref(),
        Some("A man wearing a hard hat is dancing.")
    );
    assert_eq!(first.label, Some(Label::Score(5.0)));
    let mean = stsb
        .examples
        .iter()
        .map(|e| match e.label {
            Some(Label::Score(s)) => f64::from(s),
            _ => unreachable!(),
        })
        .sum::<f64>()
        / 1500.0;
    assert!(
        (mean - 2.363907555555555).abs() < 1e-6,
        "STS-B dev mean score {mean}"
    );

    let sst2_test = load(&dir, Task::Sst2, Split::Test).unwrap();
    assert_eq!(
        sst2_test.examples.last().unwrap().id,
        1820,
        "test ids come from the index column"
    );
    let ax = load(&dir, Task::Ax, Split::Test).unwrap();
    assert_eq!(ax.examples.last().unwrap().id, 1103);
}

fn write(dir: &Path, relative: &str, text: &str) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const MNLI_HEAD: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";

/// Files in the official formats of the tasks not available here, loaded back.
#[test]
fn qqp_mnli_and_qnli_train_load_from_official_format_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "QQP/train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
        133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n\
        402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n",
    );
    write(
        d,
        "QQP/dev.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
        201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n",
    );
    write(
        d,
        "QQP/test.tsv",
        "id\tquestion1\tquestion2\n0\tWhy am I experiencing memory loss?\tWhy am I losing memory?\n",
    );
    write(
        d,
        "MNLI/train.tsv",
        &format!(
            "{MNLI_HEAD}\tlabel1\tgold_label\n\
        0\t31193\t31193n\tgovernment\t( ( Conceptually ( cream skimming ) ) ...\t( ( ( Product and ) geography ) ...\t(ROOT (S ...\t(ROOT (S ...\tConceptually cream skimming has two basic dimensions - product and geography.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n\
        1\t101457\t101457e\ttelephone\t( you ...\t( You ...\t(ROOT ...\t(ROOT ...\tyou know during the season and i guess at at your level uh you lose them to the next level\tYou lose the things to the following level if the people recall.\tentailment\tentailment\n"
        ),
    );
    for split in ["dev_matched", "dev_mismatched"] {
        write(
            d,
            &format!("MNLI/{split}.tsv"),
            &format!(
                "{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n\
            0\t63735\t63735n\tslate\t( ( The ...\t( ( The ...\t(ROOT ...\t(ROOT ...\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n\
            1\t91383\t91383c\tgovernment\t( ( This ...\t( ( The ...\t(ROOT ...\t(ROOT ...\tThis site includes a list of all award winners.\tThe Government Executive articles housed on the website are not able to be searched .\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"
            ),
        );
    }
    for split in ["test_matched", "test_mismatched"] {
        write(
            d,
            &format!("MNLI/{split}.tsv"),
            &format!(
                "{MNLI_HEAD}\n\
            0\t31493\t31493\ttravel\t( ( ( ( ( Hierbas ...\t( ( Hierbas ...\t(ROOT ...\t(ROOT ...\tHierbas, ans seco, ans dulce, and frigola are just a few names worth keeping a look-out for.\tHierbas is a name worth looking out for.\n"
            ),
        );
    }
    write(
        d,
        "QNLI/train.tsv",
        "index\tquestion\tsentence\tlabel\n\
        0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it and most of the seasons that followed, Digimon Tamers takes a darker and more realistic approach.\tnot_entailment\n\
        1\tWhich missile batteries often have individual launchers several kilometres from one another?\tWhen MANPADS is operated by specialists, batteries may have several dozen teams deploying separately in small sections.\tnot_entailment\n",
    );

    let qqp = load(d, Task::Qqp, Split::Train).unwrap();
    assert_eq!(qqp.examples.len(), 2);
    assert_eq!(
        qqp.examples[1].text_b.as_deref(),
        Some("How do you control your horniness?")
    );
    assert_eq!(qqp.examples[1].label, Some(Label::Class(1)));
    assert_eq!(
        load(d, Task::Qqp, Split::Dev).unwrap().examples[0].label,
        Some(Label::Class(0))
    );
    let qqp_test = load(d, Task::Qqp, Split::Test).unwrap();
    assert_eq!(
        (qqp_test.examples[0].id, qqp_test.examples[0].label),
        (0, None)
    );

    let mnli = load(d, Task::Mnli, Split::Train).unwrap();
    assert_eq!(
        mnli.examples[0].text_a,
        "Conceptually cream skimming has two basic dimensions - product and geography."
    );
    assert_eq!(
        mnli.examples[0].label,
        Some(Label::Class(1)),
        "neutral is class 1"
    );
    assert_eq!(
        mnli.examples[1].label,
        Some(Label::Class(0)),
        "entailment is class 0"
    );
    for split in [Split::DevMatched, Split::DevMismatched] {
        let dev = load(d, Task::Mnli, split).unwrap();
        // The gold label (last column), not label1, is the label.
        assert_eq!(dev.examples[0].label, Some(Label::Class(1)));
        assert_eq!(dev.examples[1].label, Some(Label::Class(2)));
    }
    for split in [Split::TestMatched, Split::TestMismatched] {
        let test = load(d, Task::Mnli, split).unwrap();
        assert_eq!(
            test.examples[0].text_b.as_deref(),
            Some("Hierbas is a name worth looking out for.")
        );
    }
    assert!(
        load(d, Task::Mnli, Split::Dev).is_err(),
        "MNLI has no plain dev split"
    );

    let qnli = load(d, Task::Qnli, Split::Train).unwrap();
    assert_eq!(qnli.examples[1].label, Some(Label::Class(1)));
}

fn parse_error(task: Task, split: Split, text: &[u8]) -> String {
    parse_split(text, task, split, Path::new("G/x.tsv"))
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_input_is_an_error_naming_file_line_and_expectation() {
    let rte = b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n";
    assert_eq!(
        parse_error(Task::Rte, Split::Dev, rte),
        "G/x.tsv:3: label \"maybe\" is not one of [\"entailment\", \"not_entailment\"]"
    );
    let columns = b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\n";
    assert_eq!(
        parse_error(Task::Rte, Split::Train, columns),
        "G/x.tsv:2: 3 tab-separated fields, expected 4 (truncated row?)"
    );
    let stsb_head =
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    let score = format!("{stsb_head}0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n");
    assert_eq!(
        parse_error(Task::Stsb, Split::Train, score.as_bytes()),
        "G/x.tsv:2: score \"five\" is not a number in [0, 5]"
    );
    let range = format!("{stsb_head}0\tg\tf\ty\to\ts\ts\ta\tb\t5.5\n");
    assert!(
        parse_error(Task::Stsb, Split::Dev, range.as_bytes()).contains("not a number in [0, 5]")
    );
    let utf8 = b"sentence\tlabel\nfine\t1\nbad \xC3\x28 byte\t0\n";
    assert_eq!(
        parse_error(Task::Sst2, Split::Train, utf8),
        "G/x.tsv:3: invalid UTF-8 at byte 4 of the line"
    );
    let truncated = b"gj04\t1\t\tOne sentence.\ngj04\t0\t*";
    assert_eq!(
        parse_error(Task::Cola, Split::Train, truncated),
        "G/x.tsv:2: 3 tab-separated fields, expected 4 (truncated row?)"
    );
    let header_only = b"sentence\tlabel\n";
    assert_eq!(
        parse_error(Task::Sst2, Split::Dev, header_only),
        "G/x.tsv: sst2 dev has no data rows"
    );
    assert_eq!(
        parse_error(Task::Cola, Split::Dev, b""),
        "G/x.tsv: cola dev has no data rows"
    );
    let index = b"index\tsentence\nx\thello\n";
    assert_eq!(
        parse_error(Task::Sst2, Split::Test, index),
        "G/x.tsv:2: index \"x\" is not a non-negative integer"
    );
    let missing = load(Path::new("/nonexistent-glue"), Task::Rte, Split::Dev).unwrap_err();
    assert_eq!(missing.to_string(), "/nonexistent-glue/RTE/dev.tsv");
}

#[test]
fn tokenized_splits_are_cached_and_batched_with_little_padding() {
    let files =
        resolve_model(DEFAULT_MODEL, &HubOptions::from_env()).expect("default model (make model)");
    let pretrained = PretrainedModel::open(files).unwrap();
    let tokenizer = pretrained.tokenizer(128).unwrap();
    let rte = load(&common::glue_dir(), Task::Rte, Split::Dev).unwrap();
    let cache = tempfile::tempdir().unwrap();

    let fresh = TokenizedSplit::new(&rte, &tokenizer, Some(cache.path())).unwrap();
    let cached_files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached_files.len(), 1);
    let name = cached_files[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(name.starts_with("rte-dev-L128-"), "{name}");
    let from_cache = TokenizedSplit::new(&rte, &tokenizer, Some(cache.path())).unwrap();
    assert_eq!(fresh, from_cache);
    assert_eq!(fresh, TokenizedSplit::new(&rte, &tokenizer, None).unwrap());

    // Pairs: [CLS] a [SEP] b [SEP] with token types 0…0 1…1, truncated to 128.
    let lengths = fresh.lengths();
    assert!(lengths.iter().all(|&l| l <= 128));
    assert!(lengths.contains(&128), "some RTE pairs need truncation");
    let batch = fresh.batch(&[0]);
    let first = rte.examples[0].clone();
    let expected = tokenizer
        .encode_batch(&[qpeft::model::TextInput {
            first: first.text_a,
            second: first.text_b,
        }])
        .unwrap();
    assert_eq!(batch.encoded, expected);
    assert_eq!(batch.labels, [rte.examples[0].label]);

    // Evaluation batches cover every example once and pad less than file order does.
    let eval = fresh.eval_batches(32);
    let mut seen: Vec<usize> = eval.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..fresh.len()).collect::<Vec<_>>());
    let padded = |batches: &[Vec<usize>]| -> usize {
        batches
            .iter()
            .map(|b| fresh.batch(b).encoded.input_ids.len())
            .sum()
    };
    let file_order: Vec<Vec<usize>> = (0..fresh.len())
        .collect::<Vec<_>>()
        .chunks(32)
        .map(<[usize]>::to_vec)
        .collect();
    let real: usize = lengths.iter().sum();
    println!(
        "RTE dev tokens {real}; padded: sorted {} vs file order {}",
        padded(&eval),
        padded(&file_order)
    );
    assert!(padded(&eval) < padded(&file_order));
    // Windows of 50 batches, as HF's `LengthGroupedSampler`.
    let train = fresh.train_batches(16, 50, 42, 0);
    println!("length-grouped training batches: padded {}", padded(&train));
    assert!(padded(&train) < padded(&file_order));
}

/// `qpeft predict` on AX with the tiny BERT reproduces transformers' predictions exactly.
#[test]
fn predict_writes_the_submission_file_transformers_predicts() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .args(["predict", "--task", "ax", "--max-length", "32", "--model"])
        .arg(common::fixture("tiny-bert"))
        .arg("--data-dir")
        .arg(common::glue_dir())
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read_to_string(out.path().join("AX.tsv")).unwrap();
    let expected = std::fs::read_to_string(common::fixture("tiny-bert/AX.expected.tsv")).unwrap();
    assert_eq!(written.lines().count(), 1105);
    assert_eq!(written, expected);
}

/// The majority-class baseline on the real data, against the label counts of the TSV files
/// (counted by Python's csv module): SST-2's training majority is positive (37,569 of 67,349),
/// 444 of its 872 dev sentences; MRPC's is "paraphrase" (279 of 408 dev pairs: F1 558/687);
/// CoLA's "acceptable" (721 of 1,043, MCC 0); RTE's "entailment" by 1,249 to 1,241 (146 of 277);
/// WNLI's class 0 (40 of 71). STS-B has none.
#[test]
fn majority_class_baseline_scores_the_training_majority_on_dev() {
    use qpeft::eval::baseline::majority_class;
    use qpeft::eval::metrics::MnliMain;
    let dir = common::glue_dir();
    let score = |task| majority_class(task, &dir, MnliMain::Matched).unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    close(score(Task::Sst2).unwrap().main, 444.0 / 872.0);
    let mrpc = score(Task::Mrpc).unwrap();
    close(mrpc.metrics["accuracy"], 279.0 / 408.0);
    close(mrpc.metrics["f1"], 558.0 / 687.0);
    close(mrpc.main, (279.0 / 408.0 + 558.0 / 687.0) / 2.0);
    let cola = score(Task::Cola).unwrap();
    close(cola.main, 0.0);
    close(cola.metrics["accuracy"], 721.0 / 1043.0);
    close(score(Task::Rte).unwrap().main, 146.0 / 277.0);
    close(score(Task::Wnli).unwrap().main, 40.0 / 71.0);
    assert!(score(Task::Stsb).is_none());
}
