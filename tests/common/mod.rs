//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// The tensors of a golden safetensors file, as f32 or i64 vectors with their shapes.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(path: &Path) -> Golden {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Golden { bytes }
    }

    pub fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .expect("golden file parses")
            .tensor(name)
            .is_ok()
    }

    fn view(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let tensors = SafeTensors::deserialize(&self.bytes).expect("golden file parses");
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (dtype, shape, data) = self.view(name);
        assert_eq!(dtype, Dtype::F32, "{name}");
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    pub fn f64(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let (dtype, shape, data) = self.view(name);
        assert_eq!(dtype, Dtype::F64, "{name}");
        let values = data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (dtype, shape, data) = self.view(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        let values = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The GLUE folder the tests read (`$GLUE_DIR`, else `datasets/glue`); fails, never skips,
/// when it is not there.
pub fn glue_dir() -> PathBuf {
    let dir = qpeft::data::glue_dir(None);
    assert!(
        dir.join("RTE").is_dir(),
        "GLUE data not found in {}: run `qpeft data fetch --from <glue_data mirror>` or set GLUE_DIR \
         (`make test` does this when GLUE_MIRROR is set)",
        dir.display()
    );
    dir
}

/// A matrix of standard normal draws (Box–Muller on the seeded ChaCha stream).
pub fn normal_matrix(
    rng: &mut rand_chacha::ChaCha8Rng,
    rows: usize,
    cols: usize,
) -> faer::Mat<f64> {
    use rand::Rng;
    faer::Mat::from_fn(rows, cols, |_, _| {
        let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    })
}

/// Largest |a − b| over two equally shaped matrices.
pub fn max_abs_diff_mat(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> f64 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    let mut max = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            max = max.max((a[(i, j)] - b[(i, j)]).abs());
        }
    }
    max
}

/// The §10 toy layer: W `[m, n]`, H = X_q X_qᵀ/N and D = (X_f − X_q) X_qᵀ/N from random X_f.
pub struct ToyLayer {
    pub w: faer::Mat<f64>,
    pub h: faer::Mat<f64>,
    pub d: faer::Mat<f64>,
}

/// How X_q departs from X_f in a toy layer.
#[derive(Clone, Copy)]
pub enum ToyNoise {
    /// X_q = X_f + σ·noise, independent per feature (D nearly diagonal).
    Independent(f64),
    /// X_q = X_f + σ·A·X_f with a random mixing A, so D has off-diagonal mass (a diagonal D
    /// gives GPTAQ's P = α·triu(DCᵀ, 1)·C = 0, as Cᵀ is lower triangular).
    Mixed(f64),
}

pub fn toy_layer(seed: u64, (m, n, tokens): (usize, usize, usize), noise: ToyNoise) -> ToyLayer {
    let mut rng = qpeft::seed::substream_rng(seed, "toy-layer");
    let w = normal_matrix(&mut rng, m, n);
    let xf = normal_matrix(&mut rng, n, tokens);
    let delta = match noise {
        ToyNoise::Independent(sigma) => normal_matrix(&mut rng, n, tokens) * faer::Scale(sigma),
        ToyNoise::Mixed(sigma) => normal_matrix(&mut rng, n, n) * &xf * faer::Scale(sigma),
    };
    let xq = &xf + delta;
    let scale = faer::Scale(1.0 / tokens as f64);
    let h = &xq * xq.transpose() * scale;
    let d = (&xf - &xq) * xq.transpose() * scale;
    ToyLayer { w, h, d }
}

/// Burn batches of `texts`, tokenized by `model`'s tokenizer.
pub fn batch_of(
    model: &qpeft::model::PretrainedModel,
    texts: &[qpeft::model::TextInput],
    max_length: usize,
) -> qpeft::model::EncoderInput<qpeft::device::CpuBackend> {
    let encoded = model
        .tokenizer(max_length)
        .unwrap()
        .encode_batch(texts)
        .unwrap();
    qpeft::model::encoder_input(&encoded, &Default::default())
}

/// all-MiniLM-L6-v2 and calibration batches of 32 real RTE training pairs.
pub fn minilm_with_rte() -> (
    qpeft::model::PretrainedModel,
    Vec<qpeft::model::EncoderInput<qpeft::device::CpuBackend>>,
) {
    use qpeft::model::{DEFAULT_MODEL, HubOptions, PretrainedModel, TextInput, resolve_model};
    let files =
        resolve_model(DEFAULT_MODEL, &HubOptions::from_env()).expect("default model (make model)");
    let model = PretrainedModel::open(files).unwrap();
    let rte = qpeft::data::load(
        &glue_dir(),
        qpeft::data::Task::Rte,
        qpeft::data::Split::Train,
    )
    .unwrap();
    let texts: Vec<TextInput> = rte.examples[..32]
        .iter()
        .map(|e| TextInput {
            first: e.text_a.clone(),
            second: e.text_b.clone(),
        })
        .collect();
    let batches = texts
        .chunks(16)
        .map(|chunk| batch_of(&model, chunk, 128))
        .collect();
    (model, batches)
}

/// An F64 `[rows, cols]` tensor of a fixture file as a faer matrix.
pub fn f64_matrix(tensors: &SafeTensors, name: &str) -> faer::Mat<f64> {
    let view = tensors.tensor(name).unwrap();
    let (rows, cols) = (view.shape()[0], view.shape()[1]);
    let values: Vec<f64> = view
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    faer::Mat::from_fn(rows, cols, |r, c| values[r * cols + c])
}

/// A calibration solver that keeps every weight and records each module's name, weight and
/// statistics.
#[derive(Default)]
pub struct Recorder {
    pub modules: Vec<(String, faer::Mat<f64>, qpeft::quant::stats::LayerStats)>,
}

impl qpeft::quant::solve::ModuleSolver for Recorder {
    fn solve(
        &mut self,
        name: &str,
        weight: faer::MatRef<'_, f64>,
        stats: &qpeft::quant::stats::LayerStats,
    ) -> qpeft::Result<faer::Mat<f64>> {
        self.modules
            .push((name.to_string(), weight.to_owned(), stats.clone()));
        Ok(weight.to_owned())
    }
}

/// The toy SST-2 task of the training tests and the tiny BERT's SRR init checkpoint.
pub mod toy {
    use std::path::Path;

    use super::fixture;

    const WORDS: [&str; 14] = [
        "that", "with", "from", "this", "have", "were", "they", "some", "there", "other", "which",
        "during", "first", "model",
    ];

    /// An SST-2-shaped task the tiny model can learn: label 1 iff the sentence says "people".
    pub fn write_toy_glue(root: &Path) {
        let mut state = 12345u64;
        let mut next = move |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % n as u64) as usize
        };
        let dir = root.join("SST-2");
        std::fs::create_dir_all(&dir).unwrap();
        for (split, rows) in [("train", 192), ("dev", 64)] {
            let mut text = String::from("sentence\tlabel\n");
            for i in 0..rows {
                let label = i % 2;
                let mut words: Vec<&str> =
                    (0..4 + next(4)).map(|_| WORDS[next(WORDS.len())]).collect();
                if label == 1 {
                    let at = next(words.len());
                    words.insert(at, "people");
                }
                text.push_str(&format!("{}\t{label}\n", words.join(" ")));
            }
            std::fs::write(dir.join(format!("{split}.tsv")), text).unwrap();
        }
    }

    /// The tiny BERT's SRR init checkpoint (2-bit MXINT, rank 4) and the toy GLUE folder.
    pub fn toy_setup(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let glue = root.join("glue");
        write_toy_glue(&glue);
        let calib = root.join("calib.txt");
        let lines: Vec<String> = (0..40)
            .map(|i| {
                (0..6)
                    .map(|j| WORDS[(i * 5 + j * 3) % WORDS.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        std::fs::write(&calib, lines.join("\n")).unwrap();
        // The library's `qpeft init`: SRR, 2-bit MXINT, rank 4, calibrated on the lines above.
        let spec = qpeft::pipeline::init::InitSpec {
            init: qpeft::reconstruct::init::InitName::Srr,
            rank: 4,
            lora_alpha: 16.0,
            k_rule: qpeft::reconstruct::init::KRule::Probe,
            joint_refit: false,
            loftq_iters: 5,
            lqer_batch_max: false,
            factor_split: None,
            quantizer: qpeft::quant::spec::QuantizerSpec::new(
                qpeft::quant::solve::QuantMethod::Rtn,
                2,
            ),
            calibration: qpeft::pipeline::calibrate::CalibrationSpec {
                source: calib.display().to_string(),
                samples: 40,
                max_length: 32,
                batch_size: 16,
                seed: 0,
            },
        };
        let model = qpeft::model::PretrainedModel::open(
            resolve_model(
                &fixture("tiny-bert").display().to_string(),
                &qpeft::model::HubOptions::from_env(),
            )
            .unwrap(),
        )
        .unwrap();
        let init = root.join("init");
        qpeft::pipeline::init::build_init(&model, &spec, &glue, &init, Default::default()).unwrap();
        (init, glue)
    }

    pub fn toy_recipe(init: &Path, extra: &str) -> String {
        format!(
            "[model]\nname = {:?}\ninit_checkpoint = {:?}\n[data]\ntask = \"sst2\"\n[adapter]\nrank = 4\npreserved_scaling = \"update\"\n[train]\nlearning_rate = 3e-3\nschedule = \"constant\"\nbatch_size = 16\nepochs = 30\nmax_length = 32\neval_batch_size = 64\nlog_every = 1\n{extra}",
            fixture("tiny-bert").display().to_string(),
            init.display().to_string()
        )
    }

    use qpeft::data::batch::TokenizedSplit;
    use qpeft::data::{Split, Task, load};
    use qpeft::model::resolve_model;
    use qpeft::recipe::Recipe;
    use qpeft::train::trainer::TrainData;

    pub fn toy_data(recipe: &Recipe, glue: &Path) -> TrainData {
        let base = qpeft::model::PretrainedModel::open(files(recipe)).unwrap();
        let tokenizer = base.tokenizer(recipe.train.max_length).unwrap();
        let split =
            |s| TokenizedSplit::new(&load(glue, Task::Sst2, s).unwrap(), &tokenizer, None).unwrap();
        TrainData {
            train: split(Split::Train),
            dev: vec![split(Split::Dev)],
        }
    }

    pub fn files(recipe: &Recipe) -> qpeft::model::ModelFiles {
        resolve_model(
            &recipe
                .model
                .init_checkpoint
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
            &qpeft::model::HubOptions::from_env(),
        )
        .unwrap()
    }
}

/// The `<tag>` elements of an SVG document by their `attribute` colour (upper-case hex), each as
/// its `points` attribute (empty for elements without one); panics unless the SVG is well-formed.
pub fn svg_elements_by_colour(
    svg: &str,
    tag: &str,
    attribute: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for node in doc.descendants().filter(|n| n.tag_name().name() == tag) {
        if let Some(c) = node.attribute(attribute) {
            let points = node.attribute("points").unwrap_or("").to_string();
            out.entry(c.to_uppercase()).or_default().push(points);
        }
    }
    out
}

/// The hex form the SVG backend writes for series colour `i` of the charts' palette.
pub fn palette_hex(i: usize) -> String {
    let c = qpeft::plot::PALETTE[i];
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// `dir/errors.svg` (the per-module error chart of `qpeft init` and `qpeft quantize`) draws
/// `series` lines of `modules` points each.
pub fn assert_per_module_chart(dir: &std::path::Path, modules: usize, series: usize) {
    let svg = std::fs::read_to_string(dir.join(qpeft::plot::ERRORS_CHART)).unwrap();
    let lines = svg_elements_by_colour(&svg, "polyline", "stroke");
    for i in 0..series {
        let longest = lines
            .get(&palette_hex(i))
            .and_then(|l| l.iter().map(|p| p.split_whitespace().count()).max());
        assert_eq!(longest, Some(modules), "series {i} of {}", dir.display());
    }
    assert!(
        !lines.contains_key(&palette_hex(series)),
        "more than {series} series"
    );
}
