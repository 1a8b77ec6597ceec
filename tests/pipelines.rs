//! The library pipelines behind `qpeft init` and `qpeft train`: a recipe's init spec, and the
//! init cache keyed by the serialized spec, the calibration texts and the model's weights.

mod common;

use std::path::Path;

use common::fixture;
use common::toy::write_toy_glue;
use qpeft::model::{HubOptions, PretrainedModel, resolve_model};
use qpeft::pipeline::glue::row_overrides;
use qpeft::pipeline::init::{InitSpec, cached_init};
use qpeft::recipe::Recipe;
use qpeft::reconstruct::init::KRule;
use qpeft::reconstruct::lowrank::FactorSplit;

fn model(name: &str) -> PretrainedModel {
    let files = resolve_model(
        &fixture(name).display().to_string(),
        &HubOptions::from_env(),
    )
    .unwrap();
    PretrainedModel::open(files).unwrap()
}

fn init_spec_of(recipe: &str) -> InitSpec {
    InitSpec::from_recipe(&Recipe::parse(recipe, Path::new("r.toml"), &[]).unwrap()).unwrap()
}

/// A toy GLUE folder, an empty init cache beside it and a small SRR init spec on SST-2.
struct CacheSetup {
    tmp: tempfile::TempDir,
    glue: std::path::PathBuf,
    cache: std::path::PathBuf,
    spec: InitSpec,
}

fn cache_setup() -> CacheSetup {
    let tmp = tempfile::tempdir().unwrap();
    let glue = tmp.path().join("glue");
    write_toy_glue(&glue);
    let cache = tmp.path().join("inits");
    let spec = init_spec_of(
        "[data]\ntask = \"sst2\"\n[adapter]\nrank = 4\n[quant]\ncalib_samples = 32\ncalib_max_length = 32\n",
    );
    CacheSetup {
        tmp,
        glue,
        cache,
        spec,
    }
}

#[test]
fn a_recipe_gives_its_init_spec_with_the_split_spelled_out() {
    let spec = init_spec_of(
        "[data]\ntask = \"mrpc\"\n[adapter]\ninit = \"srr\"\nk_rule = \"exact\"\n[quant]\nbits = 3\n",
    );
    assert_eq!(spec.k_rule, KRule::Exact);
    assert_eq!(spec.factor_split, Some(FactorSplit::Sqrt));
    // Every SVD initializer defaults to the balanced split, QERA included (its paper's is Σ-left).
    let qera = init_spec_of("[data]\ntask = \"mrpc\"\n[adapter]\ninit = \"qera-exact\"\n");
    assert_eq!(qera.factor_split, Some(FactorSplit::Sqrt));
    assert_eq!(spec.calibration.source, "mrpc");
    assert_eq!(spec.quantizer.bits, 3);
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains(r#""k_rule":"exact""#), "{json}");
    assert_eq!(serde_json::from_str::<InitSpec>(&json).unwrap(), spec);
}

#[test]
fn the_init_cache_is_keyed_by_spec_calibration_and_model_content() {
    let CacheSetup {
        tmp: _tmp,
        glue,
        cache,
        spec,
    } = cache_setup();
    let bert = model("tiny-bert");
    let device = Default::default();
    let first = cached_init(&bert, &spec, &glue, &cache, device).unwrap();
    assert!(first.join("model.safetensors").is_file());
    let written = std::fs::metadata(first.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    // The same spec, calibration and model: the cached folder, not rebuilt.
    assert_eq!(
        cached_init(&bert, &spec, &glue, &cache, device).unwrap(),
        first
    );
    let again = std::fs::metadata(first.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(again, written);
    // Another calibration seed draws other texts: another key.
    let mut reseeded = spec.clone();
    reseeded.calibration.seed = 1;
    let other = cached_init(&bert, &reseeded, &glue, &cache, device).unwrap();
    assert_ne!(other, first);
    // The same spec on other weights: another key.
    let roberta = model("tiny-roberta");
    let third = cached_init(&roberta, &spec, &glue, &cache, device).unwrap();
    assert!(third != first && third != other);
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("srr-rtn-2b-r4-"), "{name}");
}

/// Two processes that reach one init key build it once: the second waits on the key's lock and
/// takes the folder the first placed, untouched. A build that crashed leaves only its partial
/// folder, which the next build clears.
#[test]
fn a_second_builder_of_an_init_waits_for_the_first_and_a_crashed_build_is_cleared() {
    let CacheSetup {
        tmp,
        glue,
        cache,
        spec,
    } = cache_setup();
    let device = Default::default();
    let dir = cached_init(&model("tiny-bert"), &spec, &glue, &cache, device).unwrap();
    let weights = dir.join("model.safetensors");
    let built = std::fs::read(&weights).unwrap();
    let written = std::fs::metadata(&weights).unwrap().modified().unwrap();
    // The first process's build, not yet placed; a crashed build's partial folder beside it.
    let first = tmp.path().join("first-build");
    std::fs::rename(&dir, &first).unwrap();
    let partial = dir.with_extension("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"half-written").unwrap();

    let held = qpeft::files::lock(&dir.with_extension("lock")).unwrap();
    let second = {
        let (spec, glue, cache) = (spec.clone(), glue.clone(), cache.clone());
        std::thread::spawn(move || cached_init(&model("tiny-bert"), &spec, &glue, &cache, device))
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !second.is_finished(),
        "the second builder did not wait for the lock"
    );
    assert!(!dir.exists());
    assert_eq!(
        std::fs::read(partial.join("model.safetensors")).unwrap(),
        b"half-written"
    );
    std::fs::rename(&first, &dir).unwrap();
    drop(held);
    assert_eq!(second.join().unwrap().unwrap(), dir);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        written,
        "the waiting builder rebuilt a placed init"
    );

    // No process holds the key and only the crashed partial folder is left: built anew.
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        cached_init(&model("tiny-bert"), &spec, &glue, &cache, device).unwrap(),
        dir
    );
    // Byte for byte the first build: the file depends on the spec, texts and model alone.
    assert!(std::fs::read(&weights).unwrap() == built);
    assert!(!partial.exists());
}

/// `--compare` rows name an initializer (with `qera` and `srr-<k rule>`) and `+` modifiers, each
/// by the library's own names; anything else is refused with the names it could have been.
#[test]
fn compare_rows_map_to_recipe_overrides_by_the_library_names() {
    let rows = [
        ("lora", vec!["quant.method=none", "adapter.init=lora"]),
        ("qera", vec!["adapter.init=qera-exact"]),
        ("loftq", vec!["adapter.init=loftq"]),
        (
            "srr-exact+coreq+update",
            vec![
                "adapter.init=srr",
                "adapter.k_rule=exact",
                "quant.method=coreq",
                "adapter.preserved_scaling=update",
            ],
        ),
        (
            "srr-3+grad",
            vec![
                "adapter.init=srr",
                "adapter.k_rule=3",
                "adapter.preserved_scaling=grad",
            ],
        ),
    ];
    for (row, expected) in rows {
        assert_eq!(row_overrides(row).unwrap(), expected, "{row}");
    }
    let err = row_overrides("srrr").unwrap_err().to_string();
    assert!(
        err.contains("'srrr'") && err.contains("qera-exact"),
        "{err}"
    );
    let err = row_overrides("qlora+fast").unwrap_err().to_string();
    assert!(
        err.contains("'fast'") && err.contains("grad, update, off") && err.contains("kcoreq"),
        "{err}"
    );
    let err = row_overrides("srr-some").unwrap_err().to_string();
    assert!(err.contains("srr-some") && err.contains("probe"), "{err}");
}

/// The pooled GLUE calibration source takes one training text of each pooled task in turn; a
/// longer list extends a shorter one, and the seed changes every task's picks.
#[test]
fn pooled_glue_calibration_takes_each_task_in_turn_from_its_training_set() {
    use qpeft::data::{Split, load};
    use qpeft::pipeline::calibrate::{CalibrationSpec, POOLED_CALIBRATION, POOLED_TASKS};
    let glue = common::glue_dir();
    let spec = |source: &str, samples: usize, seed: u64| CalibrationSpec {
        source: source.into(),
        samples,
        max_length: 128,
        batch_size: 16,
        seed,
    };
    let n = POOLED_TASKS.len();
    let pooled = spec(POOLED_CALIBRATION, 3 * n + 2, 0).texts(&glue).unwrap();
    assert_eq!(pooled.len(), 3 * n + 2);
    let train: Vec<Vec<(String, Option<String>)>> = POOLED_TASKS
        .iter()
        .map(|&task| {
            load(&glue, task, Split::Train)
                .unwrap()
                .examples
                .into_iter()
                .map(|e| (e.text_a, e.text_b))
                .collect()
        })
        .collect();
    for (i, text) in pooled.iter().enumerate() {
        let task = i % n;
        let pair = (text.first.clone(), text.second.clone());
        assert!(
            train[task].contains(&pair),
            "text {i} is not from {}'s training set: {pair:?}",
            POOLED_TASKS[task].name()
        );
    }
    // Single sentences (CoLA, SST-2) and pairs (MRPC, STS-B, RTE) alike.
    assert!(pooled[0].second.is_none() && pooled[2].second.is_some());
    // A longer list starts with the shorter one; the seed changes every task's picks.
    let more = spec(POOLED_CALIBRATION, 4 * n, 0).texts(&glue).unwrap();
    assert_eq!(more[..3 * n + 2], pooled[..]);
    let other = spec(POOLED_CALIBRATION, 3 * n + 2, 1).texts(&glue).unwrap();
    for task in 0..n {
        assert_ne!(other[task], pooled[task], "{}", POOLED_TASKS[task].name());
    }
    // An unknown source names what is accepted.
    let err = spec("wikitext", 8, 0).texts(&glue).unwrap_err().to_string();
    assert!(
        err.contains("\"wikitext\"") && err.contains("\"glue\""),
        "{err}"
    );
}
