//! Hardened inputs: seeded fuzzing of recipe files and of the safetensors files qpeft reads
//! (its init checkpoints and quantized model folders, NF codebook included). Every input must give a value or an error
//! that names the file — never a panic; an accepted recipe must survive its own TOML round trip.
//! The counts are printed (`cargo test --test fuzz -- --nocapture`).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use qpeft::model::{ModelFiles, PretrainedModel};
use qpeft::recipe::Recipe;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RECIPE_CASES: usize = 3000;
const WEIGHT_CASES: usize = 1000;

/// Values of every TOML type and of the ranges the recipe checks.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "8",
    "64",
    "1e-4",
    "-3e-4",
    "0.0",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "true",
    "false",
    "\"\"",
    "\"rte\"",
    "\"stsb\"",
    "\"mxint\"",
    "\"nf\"",
    "\"srr\"",
    "\"probe\"",
    "\"exact\"",
    "\"12\"",
    "\"riemannian-adamw\"",
    "\"cosine\"",
    "\"grad\"",
    "\"none\"",
    "\"../../etc/passwd\"",
    "[]",
    "[1, 2]",
    "[\"query\"]",
    "{}",
    "{ a = 1 }",
    "1979-05-27",
    "\"\\u00e9\"",
];

fn recipe_sources() -> Vec<(PathBuf, String)> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
    paths.sort();
    assert!(paths.len() >= 9, "{paths:?}");
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// One random edit of a recipe's text.
fn mutate(text: &str, rng: &mut ChaCha8Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let keys: Vec<&'static str> = qpeft::recipe::valid_keys()
        .into_iter()
        .flat_map(|(_, keys)| keys.iter().copied())
        .collect();
    let line = rng.random_range(0..lines.len().max(1));
    match rng.random_range(0..9) {
        // A value of another type or out of range.
        0 | 1 => {
            if let Some(l) = lines.get_mut(line)
                && let Some((key, _)) = l.split_once('=')
            {
                *l = format!("{key}= {}", VALUES.choose(rng).unwrap());
            }
        }
        // A known key, perhaps in the wrong section, with any value.
        2 => lines.insert(
            line,
            format!(
                "{} = {}",
                keys.choose(rng).unwrap(),
                VALUES.choose(rng).unwrap()
            ),
        ),
        // An unknown key or section.
        3 => lines.insert(line, "[traing]\nlearning_rate = 1e-4".into()),
        4 => lines.insert(line, "learnig_rate = 1e-4".into()),
        // A line removed or repeated (a duplicate key).
        5 => {
            if !lines.is_empty() {
                lines.remove(line);
            }
        }
        6 => {
            if let Some(l) = lines.get(line).cloned() {
                lines.insert(line, l);
            }
        }
        // Truncated anywhere, or a byte of noise.
        7 => {
            let joined = lines.join("\n");
            let cut = rng.random_range(0..=joined.len());
            let cut = (0..=cut)
                .rev()
                .find(|&c| joined.is_char_boundary(c))
                .unwrap();
            return joined[..cut].to_string();
        }
        _ => {
            let joined = lines.join("\n");
            let at = rng.random_range(0..=joined.len());
            let at = (0..=at)
                .rev()
                .find(|&c| joined.is_char_boundary(c))
                .unwrap();
            let noise = ["\"", "[", "]", "=", "\n", "\0", "#", "'''", "\\", "é"];
            return format!(
                "{}{}{}",
                &joined[..at],
                noise.choose(rng).unwrap(),
                &joined[at..]
            );
        }
    }
    lines.join("\n")
}

#[test]
fn recipe_fuzzing_never_panics_and_accepted_recipes_round_trip() {
    let sources = recipe_sources();
    let mut rng = ChaCha8Rng::seed_from_u64(20261127);
    let (mut accepted, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..RECIPE_CASES {
        let (origin, text) = sources.choose(&mut rng).unwrap();
        let mut text = text.clone();
        for _ in 0..rng.random_range(1..=3) {
            text = mutate(&text, &mut rng);
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let recipe = Recipe::parse(&text, origin, &[])?;
            recipe.task()?;
            qpeft::pipeline::run::train_config(&recipe);
            let again = Recipe::parse(&recipe.to_toml()?, origin, &[])?;
            assert_eq!(again, recipe, "the round trip changed the recipe");
            Ok::<_, qpeft::Error>(())
        }));
        match outcome {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                refused += 1;
                let message = e.to_string();
                assert!(
                    message.contains(&origin.display().to_string()),
                    "case {case}: the error does not name {}: {message}",
                    origin.display()
                );
            }
            Err(_) => panics.push((case, text)),
        }
    }
    println!(
        "recipes: {RECIPE_CASES} mutated inputs, {accepted} accepted (round trip equal), {refused} refused with an error, {} panics",
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "panics on: {:?}",
        &panics[..panics.len().min(3)]
    );
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

/// A copy of a model folder (config, tokenizer, weights) with `weights` as its safetensors file.
fn folder_with(source: &Path, weights: &[u8], dir: &Path) -> ModelFiles {
    std::fs::create_dir_all(dir).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    ModelFiles {
        config: dir.join("config.json"),
        tokenizer: dir.join("tokenizer.json"),
        weights: dir.join("model.safetensors"),
    }
}

/// The header JSON of a safetensors file and the bytes after it.
fn split_header(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        &bytes[8 + n..],
    )
}

fn join_header(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    out
}

/// One random corruption of a safetensors file: truncation, a flipped byte, or a header that
/// lies (dtype, shape, offsets, a missing tensor, qpeft metadata of another version or shape).
fn corrupt(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (mut header, data) = split_header(bytes);
    let names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = names.choose(rng).unwrap().clone();
    match rng.random_range(0..9) {
        0 => bytes[..rng.random_range(0..bytes.len())].to_vec(),
        1 => {
            let mut out = bytes.to_vec();
            let at = rng.random_range(0..out.len().min(8 + 4096));
            out[at] ^= 1 << rng.random_range(0..8);
            out
        }
        2 => {
            let dtype = ["F64", "I64", "BOOL", "U8", "F8_E4M3", "I32", "X"]
                .choose(rng)
                .unwrap();
            header[&name]["dtype"] = (*dtype).into();
            join_header(&header, data)
        }
        3 => {
            let shape = header[&name]["shape"].as_array().unwrap().clone();
            let mut shape: Vec<u64> = shape.iter().map(|v| v.as_u64().unwrap()).collect();
            match rng.random_range(0..3) {
                0 => shape.push(1),
                1 => shape.truncate(shape.len().saturating_sub(1)),
                _ => {
                    if let Some(d) = shape.first_mut() {
                        *d = (*d).saturating_mul(2).max(1) - 1;
                    }
                }
            }
            header[&name]["shape"] = serde_json::json!(shape);
            join_header(&header, data)
        }
        4 => {
            let offsets = header[&name]["data_offsets"].as_array().unwrap().clone();
            let end = offsets[1].as_u64().unwrap();
            let lie = [end + 4, end * 2 + 8, u64::MAX / 2, 0]
                .choose(rng)
                .copied()
                .unwrap();
            header[&name]["data_offsets"] = serde_json::json!([offsets[0], lie]);
            join_header(&header, data)
        }
        5 => {
            header.as_object_mut().unwrap().remove(&name);
            join_header(&header, data)
        }
        6 | 7 => {
            // qpeft's own metadata: another format version, or a field of the wrong shape.
            let meta = header["__metadata__"].as_object_mut().unwrap();
            let keys: Vec<String> = meta
                .keys()
                .filter(|k| k.starts_with("qpeft"))
                .cloned()
                .collect();
            if let Some(key) = keys.choose(rng) {
                let mut value: serde_json::Value =
                    serde_json::from_str(meta[key].as_str().unwrap()).unwrap();
                let fields: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
                let field = fields.choose(rng).unwrap();
                value[field] = [
                    serde_json::json!(99),
                    serde_json::json!(-1),
                    serde_json::json!("x"),
                    serde_json::json!(null),
                    serde_json::json!({}),
                ]
                .choose(rng)
                .unwrap()
                .clone();
                meta.insert(key.clone(), value.to_string().into());
            }
            join_header(&header, data)
        }
        _ => {
            let mut out = bytes.to_vec();
            out.extend(std::iter::repeat_n(0u8, rng.random_range(1..64)));
            let (mut header, data) = split_header(&out);
            header[&name]["data_offsets"] = serde_json::json!([0, 0]);
            join_header(&header, data)
        }
    }
}

/// Opens the folder and builds the classifier on it, the path every command takes.
fn load(files: ModelFiles) -> qpeft::Result<()> {
    let model = PretrainedModel::open(files)?;
    let head = model.config.head;
    model.classifier::<NdArray<f32>>(head, &Default::default())?;
    Ok(())
}

/// `qpeft quantize` of the tiny BERT onto NF2 (format version 2, `.qlevels`) into `out`.
fn nf_quantized_tiny_bert(out: &Path) -> PathBuf {
    let calib = out.with_extension("txt");
    std::fs::write(
        &calib,
        "A man is playing a guitar.\nDogs run in the field.\n",
    )
    .unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .args(["quantize", "--method", "rtn", "--bits", "2", "--grid", "nf"])
        .args(["--group", "32", "--model"])
        .arg(common::fixture("tiny-bert"))
        .arg("--calib")
        .arg(&calib)
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    out.to_path_buf()
}

#[test]
fn safetensors_fuzzing_never_panics_and_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = [
        common::fixture("train-equiv/inits/qera-exact"),
        common::fixture("train-equiv/inits/srr"),
        common::fixture("tiny-bert"),
        nf_quantized_tiny_bert(&tmp.path().join("nf")),
    ];
    for source in &sources {
        let files = folder_with(
            source,
            &std::fs::read(source.join("model.safetensors")).unwrap(),
            &tmp.path().join("intact"),
        );
        load(files).unwrap_or_else(|e| panic!("{}: the intact file fails: {e}", source.display()));
    }
    // Unwinding prints each panic; the count is what matters.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut loaded, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..WEIGHT_CASES {
        let source = sources.choose(&mut rng).unwrap();
        let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
        let corrupted = corrupt(&bytes, &mut rng);
        let dir = tmp.path().join(format!("case-{case}"));
        let files = folder_with(source, &corrupted, &dir);
        let weights = files.weights.display().to_string();
        match catch_unwind(AssertUnwindSafe(|| load(files))) {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                refused += 1;
                let message = format!("{e:#}");
                assert!(message.contains(&weights), "case {case}: {message}");
            }
            Err(_) => panics.push((case, source.clone())),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::panic::set_hook(quiet);
    println!(
        "safetensors: {WEIGHT_CASES} corrupted files, {refused} refused with an error naming the file, {loaded} loaded (a corruption that leaves the model readable), {} panics",
        panics.len()
    );
    assert!(panics.is_empty(), "panics on: {panics:?}");
    assert!(refused > WEIGHT_CASES / 2, "{refused} refused");
}
