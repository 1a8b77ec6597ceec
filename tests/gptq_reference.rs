//! GPTQ against a numpy transcription of IST-DASLab/gptq's `fasterquant`
//! (`tests/fixtures/make_gptq_fixtures.py`): identical integer codes in every configuration.

mod common;

use qpeft::quant::gptq::{GptqConfig, GroupFit, gptq};
use qpeft::quant::grid::{Bits, GridKind, GridSpec, Rounding};
use qpeft::quant::layer::Grouping;
use safetensors::SafeTensors;
use serde_json::Value;

#[test]
fn codes_equal_the_reference_loop_in_every_configuration() {
    let bytes = std::fs::read(common::fixture("gptq/gptq.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("gptq/cases.json")).unwrap())
            .unwrap();
    let w = common::f64_matrix(&tensors, "W");
    let h = common::f64_matrix(&tensors, "H");
    let cases = spec["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 36);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bits = Bits::new(case["bits"].as_u64().unwrap() as u8).unwrap();
        let kind = if case["sym"].as_bool().unwrap() {
            GridKind::SymmetricGptq
        } else {
            GridKind::Asymmetric
        };
        let group = case["group"].as_i64().unwrap();
        let grouping = match (group, case["static_groups"].as_bool().unwrap()) {
            (-1, _) => Grouping::PerRow,
            (g, false) => Grouping::Dynamic(g as usize),
            (g, true) => Grouping::Static(g as usize),
        };
        let config = GptqConfig {
            grid: GridSpec {
                sym_nonneg_quirk: true,
                ..GridSpec::new(bits, kind)
            },
            grouping,
            act_order: case["act_order"].as_bool().unwrap(),
            block: spec["block"].as_u64().unwrap() as usize,
            percdamp: spec["percdamp"].as_f64().unwrap(),
            rounding: Rounding::Nearest,
            group_fit: GroupFit::StaleOuter,
        };
        let result = gptq(w.as_ref(), h.as_ref(), &config).unwrap();
        let expected = tensors.tensor(name).unwrap();
        assert_eq!(expected.shape(), [result.rows, result.cols]);
        let mismatches = result
            .codes
            .iter()
            .zip(expected.data())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            mismatches,
            0,
            "{name}: {mismatches} of {} codes differ",
            result.codes.len()
        );
        if let Grouping::Dynamic(_) = grouping {
            // g = 32 < B = 64: fitting on current values is a different (recommended) algorithm.
            let current = gptq(
                w.as_ref(),
                h.as_ref(),
                &GptqConfig {
                    group_fit: GroupFit::Current,
                    ..config
                },
            )
            .unwrap();
            assert_ne!(
                current.codes, result.codes,
                "{name}: GroupFit::StaleOuter should be live"
            );
        }
        // Ŵ is the grid value of each code.
        for r in 0..result.rows {
            for c in 0..result.cols {
                let grid = result.grid(r, c);
                assert_eq!(
                    result.dequantized[(r, c)],
                    grid.dequantize(u32::from(result.codes[r * result.cols + c]))
                );
            }
        }
    }
}

/// The parallel parts of the solver (Cholesky, triangular inverse, block flush) give the same
/// bits on one thread as on two: results do not depend on the machine's core count.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let layer = qpeft::quant::bench::synthetic_layer(256, 1024, 3);
    let config = GptqConfig::new(GridSpec::new(Bits::new(3).unwrap(), GridKind::Asymmetric));
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| gptq(layer.w.as_ref(), layer.h.as_ref(), &config).unwrap())
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.codes, two.codes);
    assert_eq!(one.dequantized, two.dequantized);
    assert_eq!(one.loss.to_bits(), two.loss.to_bits());
}
