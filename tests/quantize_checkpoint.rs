//! Quantization end to end on the tiny BERT: the written directory loads back through the
//! normal model path with weights equal to the solver's Ŵ (as f32), records its metadata, and a
//! file of another format version is refused; an NF grid is stored with its codebook; MXINT is
//! stored at 2.25 bits per weight and 8-bit embedding tables load as their per-row RTN; f16
//! scales are fitted and stored in f16; files of format version 1 still load.

mod common;

use std::path::Path;

use faer::Mat;
use safetensors::Dtype;

use qpeft::device::CpuBackend;
use qpeft::formats::checkpoint::WeightFile;
use qpeft::formats::packed::FORMAT_VERSION;
use qpeft::model::weights::linear_weight_out_in;
use qpeft::model::{HubOptions, PretrainedModel, resolve_model};
use qpeft::pipeline::calibrate::CalibrationSpec;
use qpeft::pipeline::quantize::{QuantizeReport, QuantizeSpec, quantize};
use qpeft::quant::codebook::nf_codebook;
use qpeft::quant::grid::{Bits, GridKind, GridSpec, Rounding, ScaleDtype};
use qpeft::quant::layer::{Grouping, rtn};
use qpeft::quant::solve::QuantMethod;
use qpeft::quant::spec::QuantizerSpec;

fn open(dir: &Path) -> PretrainedModel {
    let options = HubOptions {
        cache_dir: dir.join("none"),
        offline: true,
    };
    PretrainedModel::open(resolve_model(dir.to_str().unwrap(), &options).unwrap()).unwrap()
}

/// The library's `quantize` on the tiny BERT with `quantizer`, into `work/q`; its report.json
/// reads back as the report it returned.
fn quantize_tiny(work: &Path, quantizer: QuantizerSpec) -> std::path::PathBuf {
    let calib = work.join("calib.txt");
    std::fs::write(&calib, "The quick brown fox.\nA man is playing a guitar.\nIs this grammatical?\nDogs run in the field.\n").unwrap();
    let out = work.join("q");
    let spec = QuantizeSpec {
        quantizer,
        calibration: CalibrationSpec {
            source: calib.display().to_string(),
            samples: 128,
            max_length: 128,
            batch_size: 16,
            seed: 0,
        },
        eval: None,
        eval_max_length: 128,
    };
    let model = resolve_model(
        common::fixture("tiny-bert").to_str().unwrap(),
        &HubOptions::from_env(),
    )
    .unwrap();
    let outcome = quantize(model, &spec, work, &out, Default::default()).unwrap();
    let written: QuantizeReport =
        serde_json::from_str(&std::fs::read_to_string(&outcome.json).unwrap()).unwrap();
    assert_eq!(written, outcome.report);
    out
}

/// Each linear of `quantized` loaded as a classifier, `[out, in]`, beside the tiny BERT's own.
fn linears_beside_the_original(quantized: &PretrainedModel) -> Vec<(String, Mat<f64>, Mat<f64>)> {
    let original = open(&common::fixture("tiny-bert"));
    let device = Default::default();
    let (q_model, _) = quantized
        .classifier::<CpuBackend>(quantized.config.head, &device)
        .unwrap();
    let (f_model, _) = original
        .classifier::<CpuBackend>(original.config.head, &device)
        .unwrap();
    f_model
        .linear_names()
        .into_iter()
        .map(|name| {
            let q = linear_weight_out_in(q_model.linear(&name).unwrap()).unwrap();
            let f = linear_weight_out_in(f_model.linear(&name).unwrap()).unwrap();
            (name, q, f)
        })
        .collect()
}

#[test]
fn quantized_directory_round_trips_through_the_model_loader() {
    let work = tempfile::tempdir().unwrap();
    let out = quantize_tiny(
        work.path(),
        QuantizerSpec {
            group: Some(32),
            ..QuantizerSpec::new(QuantMethod::Gptq, 3)
        },
    );

    let quantized = open(&out);
    let meta = quantized.weights.quantization().expect("qpeft metadata");
    assert_eq!(
        (meta.bits, meta.group, meta.format_version),
        (3, 32, FORMAT_VERSION)
    );
    assert!(
        !quantized
            .weights
            .contains("bert.encoder.layer.0.attention.self.query.weight")
    );
    assert!(
        quantized
            .weights
            .contains("bert.encoder.layer.0.attention.self.query.qcodes")
    );
    for (name, q, f) in linears_beside_the_original(&quantized) {
        let target = name.starts_with("encoder.");
        if target {
            // 3 bits: at most 8 distinct values per row and group (groups follow act-order,
            // so each column's group comes from the file's `.qgroup` where the order is not
            // the columns' own).
            let group: Vec<i32> = match quantized.weights.raw(&format!("bert.{name}.qgroup")) {
                Ok((_, _, raw)) => raw
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Err(_) => (0..q.ncols() as i32).map(|c| c / 32).collect(),
            };
            for r in 0..q.nrows() {
                for g in 0..=*group.iter().max().unwrap() {
                    let mut levels: Vec<f64> = (0..q.ncols())
                        .filter(|&c| group[c] == g)
                        .map(|c| q[(r, c)])
                        .collect();
                    assert_eq!(levels.len(), 32, "{name}: groups of 32");
                    levels.sort_by(f64::total_cmp);
                    levels.dedup();
                    assert!(
                        levels.len() <= 8,
                        "{name} row {r} group {g}: {} levels",
                        levels.len()
                    );
                }
            }
        }
        let same = (0..q.nrows()).all(|r| (0..q.ncols()).all(|c| q[(r, c)] == f[(r, c)]));
        assert_eq!(same, !target, "{name}: only encoder linears are quantized");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["modules"], 12);
    let bpw = report["summary"]["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 3.0 && bpw < 6.0, "{bpw}");
    let to_full_precision = report["modules"][0]["relative_error_to_full_precision"].is_number();
    common::assert_per_module_chart(&out, 12, 1 + usize::from(to_full_precision));

    // A file claiming another format version is refused with a clear error.
    let mut bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    // The qpeft entry is a JSON string inside the header, so its quotes are escaped.
    let from = r#"\"format_version\":3"#;
    assert!(header.contains(from), "{header}");
    let patched = header.replacen(from, r#"\"format_version\":9"#, 1);
    bytes[8..8 + header_len].copy_from_slice(patched.as_bytes());
    std::fs::write(out.join("model.safetensors"), bytes).unwrap();
    let options = HubOptions {
        cache_dir: out.join("none"),
        offline: true,
    };
    let err = PretrainedModel::open(resolve_model(out.to_str().unwrap(), &options).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("format version 9 is not supported"), "{err}");
}

/// `--grid nf`: the file is format version 2 with each layer's NF2 codebook in `.qlevels`, and
/// the loaded weights are the library's RTN on the NF grid (blocks of 32 input features, each
/// scaled by its absmax), up to the f32 product of the stored scale and level.
#[test]
fn nf_grid_is_stored_with_its_codebook_and_loads_as_rtn() {
    let work = tempfile::tempdir().unwrap();
    let out = quantize_tiny(
        work.path(),
        QuantizerSpec {
            grid: Some(GridKind::NormalFloat),
            group: Some(32),
            ..QuantizerSpec::new(QuantMethod::Rtn, 2)
        },
    );
    let quantized = open(&out);
    let meta = quantized.weights.quantization().expect("qpeft metadata");
    assert_eq!((meta.bits, meta.format_version), (2, FORMAT_VERSION));
    let (_, shape, raw) = quantized
        .weights
        .raw("bert.encoder.layer.0.attention.self.query.qlevels")
        .unwrap();
    assert_eq!(shape, [4]);
    let stored: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let expected: Vec<f32> = nf_codebook(2).iter().map(|&v| v as f32).collect();
    assert_eq!(stored, expected);

    let spec = GridSpec::new(Bits::new(2).unwrap(), GridKind::NormalFloat);
    let mut checked = 0;
    for (name, q, f) in linears_beside_the_original(&quantized)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("encoder."))
    {
        let reference = rtn(f.as_ref(), &spec, Grouping::Static(32), Rounding::Nearest).unwrap();
        for r in 0..q.nrows() {
            for c in 0..q.ncols() {
                let (got, want) = (q[(r, c)], reference.dequantized[(r, c)]);
                assert!(
                    (got - want).abs() <= 2.5e-7 * want.abs(),
                    "{name} ({r}, {c}): {got} vs {want}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 12);
}

/// The tensors of `name` (a linear or an embedding table) in a written file.
fn stored_suffixes(file: &WeightFile, name: &str) -> Vec<String> {
    let mut suffixes: Vec<String> = file
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(&format!("{name}.")).map(str::to_string))
        .collect();
    suffixes.sort();
    suffixes
}

/// MXINT-2 in blocks of 32 is stored as 2-bit codes and one E8M0 exponent per block: exactly
/// 2.25 bits per weight, no scale, zero or group tensors, and the weights load as the library's
/// RTN exactly (the steps are powers of two). `--embeddings 8` stores the embedding tables as
/// 8-bit codes with one scale and zero per row, and they load as symmetric per-row RTN computed
/// here.
#[test]
fn mxint_is_stored_at_two_and_a_quarter_bits_and_embeddings_at_eight() {
    let work = tempfile::tempdir().unwrap();
    let out = quantize_tiny(
        work.path(),
        QuantizerSpec {
            grid: Some(GridKind::MxInt),
            group: Some(32),
            embeddings: Some(8),
            ..QuantizerSpec::new(QuantMethod::Rtn, 2)
        },
    );
    let quantized = open(&out);
    let meta = quantized.weights.quantization().expect("qpeft metadata");
    assert_eq!(
        (meta.bits, meta.embedding_bits, meta.format_version),
        (2, Some(8), FORMAT_VERSION)
    );
    let file = &quantized.weights;
    assert_eq!(
        stored_suffixes(file, "bert.encoder.layer.0.intermediate.dense"),
        ["bias", "qcodes", "qexp"]
    );
    assert_eq!(
        stored_suffixes(file, "bert.embeddings.word_embeddings"),
        ["qcodes", "qscale", "qzero"]
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["bits_per_weight"].as_f64().unwrap(), 2.25);

    let spec = GridSpec::new(Bits::new(2).unwrap(), GridKind::MxInt);
    for (name, q, f) in linears_beside_the_original(&quantized)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("encoder."))
    {
        let reference = rtn(f.as_ref(), &spec, Grouping::Static(32), Rounding::Nearest).unwrap();
        let same = (0..q.nrows()).all(|r| {
            (0..q.ncols()).all(|c| q[(r, c)] == reference.dequantized[(r, c)] as f32 as f64)
        });
        assert!(same, "{name}: the loaded weight is the RTN Ŵ");
    }

    let original = WeightFile::open(&common::fixture("tiny-bert/model.safetensors")).unwrap();
    for table in ["word", "position", "token_type"] {
        let prefix = format!("bert.embeddings.{table}_embeddings.");
        let shape = original.shape(&format!("{prefix}weight")).unwrap();
        let (rows, cols) = (shape[0], shape[1]);
        let w = original
            .read_f32(&format!("{prefix}weight"), &shape)
            .unwrap();
        let loaded = file.embedding_table(&prefix, rows, cols).unwrap();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let absmax = row.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
            let s = (absmax / 127.0).max(1e-5);
            for c in 0..cols {
                // The file's formula in f32: qscale · (code − qzero).
                let level = (f64::from(row[c]) / s).round_ties_even() as f32;
                let want = s as f32 * level;
                assert_eq!(loaded[r * cols + c], want, "{table} ({r}, {c})");
            }
        }
    }
}

/// Files of format version 1 (F32 scale and zero per group, I32 group of every column) still
/// load: each packed layer reads as `scale·(code − zero)` of its stored tensors. The fixture is
/// a QERA init checkpoint of the tiny BERT written by a version-1 build (the one the committed
/// step-by-step training cases also start from).
#[test]
fn format_version_1_files_still_load() {
    let path = common::fixture("format-v1/model.safetensors");
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.quantization().unwrap().format_version, 1);
    let name = "bert.encoder.layer.1.output.dense.";
    let f32s = |suffix: &str| {
        let (_, _, raw) = file.raw(&format!("{name}{suffix}")).unwrap();
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let (scale, zero) = (f32s("qscale"), f32s("qzero"));
    let (_, _, group) = file.raw(&format!("{name}qgroup")).unwrap();
    let group: Vec<usize> = group
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let (_, shape, codes) = file.raw(&format!("{name}qcodes")).unwrap();
    let (rows, cols) = (shape[0], group.len());
    let groups = scale.len() / rows;
    let bits = 8 * shape[1] / cols;
    let frozen = file.frozen_weight(name, cols, rows).unwrap();
    let loaded = frozen.dequantize().unwrap();
    for r in 0..rows {
        for c in 0..cols {
            let bit = c * bits;
            let code = (codes[r * shape[1] + bit / 8] >> (bit % 8)) & ((1 << bits) - 1);
            let k = r * groups + group[c];
            let want = scale[k] * (f32::from(code) - zero[k]);
            assert_eq!(loaded[r * cols + c], want, "({r}, {c})");
        }
    }
    assert_eq!(
        frozen.stored_bytes(),
        codes.len() + 4 * (2 * scale.len() + cols)
    );
}

/// `scale_dtype = f16` fits every grid's scale in f16 and stores it as F16: NF2 and asymmetric
/// 2-bit grids in groups of 32 take 2 + 16/32 and 2 + 24/32 bits per weight (NF adds its 4-level
/// codebook per layer), and the loaded weights equal RTN computed here from the f16-rounded
/// scale (`half`'s conversion of the group's f32 absmax or range): nearest NF level, or
/// `z = round(−xmin/s)` and `s·(clamp(round(w/s) + z) − z)`.
#[test]
fn f16_scales_are_fitted_and_stored_in_f16() {
    for kind in [GridKind::NormalFloat, GridKind::Asymmetric] {
        let work = tempfile::tempdir().unwrap();
        let out = quantize_tiny(
            work.path(),
            QuantizerSpec {
                grid: Some(kind),
                group: Some(32),
                scale_dtype: Some(ScaleDtype::F16),
                ..QuantizerSpec::new(QuantMethod::Rtn, 2)
            },
        );
        let quantized = open(&out);
        let file = &quantized.weights;
        let name = "bert.encoder.layer.0.intermediate.dense";
        let (dtype, shape, _) = file.raw(&format!("{name}.qscale")).unwrap();
        assert_eq!((dtype, shape), (Dtype::F16, vec![64, 1]), "{kind}");
        let expected_suffixes: &[&str] = match kind {
            GridKind::NormalFloat => &["bias", "qcodes", "qlevels", "qscale"],
            _ => &["bias", "qcodes", "qscale", "qzero"],
        };
        assert_eq!(stored_suffixes(file, name), expected_suffixes, "{kind}");

        let (mut weights, mut bits) = (0usize, 0usize);
        for (layer, q, f) in linears_beside_the_original(&quantized)
            .into_iter()
            .filter(|(n, _, _)| n.starts_with("encoder."))
        {
            let (rows, cols) = (f.nrows(), f.ncols());
            weights += rows * cols;
            bits += rows * cols * 2 + rows * (cols / 32) * 16;
            bits += match kind {
                GridKind::NormalFloat => 4 * 32,
                _ => rows * (cols / 32) * 8,
            };
            for r in 0..rows {
                for g in 0..cols / 32 {
                    let w: Vec<f32> = (0..32).map(|c| f[(r, g * 32 + c)] as f32).collect();
                    let xmin = w.iter().fold(0f32, |m, &v| m.min(v));
                    let xmax = w.iter().fold(0f32, |m, &v| m.max(v));
                    let want: Vec<f32> = match kind {
                        GridKind::NormalFloat => {
                            let s = half::f16::from_f32(xmax.max(-xmin)).to_f32();
                            let levels = nf_codebook(2);
                            w.iter()
                                .map(|&v| {
                                    let u = f64::from(v) / f64::from(s);
                                    let nearest = levels
                                        .iter()
                                        .copied()
                                        .min_by(|a, b| (a - u).abs().total_cmp(&(b - u).abs()))
                                        .unwrap();
                                    s * nearest as f32
                                })
                                .collect()
                        }
                        _ => {
                            let s = half::f16::from_f64(f64::from(xmax - xmin) / 3.0).to_f64();
                            let z = (-f64::from(xmin) / s).round_ties_even();
                            w.iter()
                                .map(|&v| {
                                    let code =
                                        ((f64::from(v) / s).round_ties_even() + z).clamp(0.0, 3.0);
                                    s as f32 * (code - z) as f32
                                })
                                .collect()
                        }
                    };
                    for c in 0..32 {
                        let got = q[(r, g * 32 + c)] as f32;
                        assert_eq!(got, want[c], "{kind} {layer} ({r}, {})", g * 32 + c);
                    }
                }
            }
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let reported = report["summary"]["bits_per_weight"].as_f64().unwrap();
        assert_eq!(reported, bits as f64 / weights as f64, "{kind}");
    }
}
