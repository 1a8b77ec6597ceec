//! Errors come in kinds a caller can act on (configuration, data, I/O with its source, numeric
//! failure, divergence, internal invariant), and shape preconditions inside numeric kernels
//! are assertions, as in faer. Divergence is checked by `tests/training.rs`.

use std::error::Error as _;

use faer::Mat;
use qpeft::Error;
use qpeft::formats::checkpoint::WeightFile;
use qpeft::quant::gptq::{GptqConfig, gptq};
use qpeft::quant::grid::{Bits, GridKind, GridSpec};
use qpeft::quant::hessian::inverse_cholesky_upper;

#[test]
fn a_setting_out_of_range_is_a_configuration_error() {
    let err = Bits::new(9).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(err.to_string(), "bits must be 2 to 8, got 9");
}

#[test]
fn a_missing_file_is_an_io_error_that_keeps_its_source() {
    let err = match WeightFile::open(std::path::Path::new("/nonexistent/model.safetensors")) {
        Ok(_) => panic!("opened a file that does not exist"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert_eq!(err.to_string(), "/nonexistent/model.safetensors");
    let source = err.source().expect("the I/O error is kept as the source");
    assert!(source.to_string().contains("No such file"), "{source}");
}

#[test]
fn a_factorization_that_fails_is_a_numeric_error() {
    // Negative definite: no damping retry makes it positive definite.
    let h = Mat::from_fn(3, 3, |i, j| if i == j { -1.0 } else { 0.0 });
    let err = inverse_cholesky_upper(h.as_ref()).unwrap_err();
    assert!(matches!(err, Error::Numeric(_)), "{err:?}");
}

#[test]
#[should_panic(expected = "H is 3×3, expected 4×4")]
fn a_kernel_given_mismatched_shapes_asserts() {
    let w = Mat::<f64>::zeros(2, 4);
    let h = Mat::<f64>::identity(3, 3);
    let config = GptqConfig::new(GridSpec::new(Bits::new(2).unwrap(), GridKind::Asymmetric));
    let _ = gptq(w.as_ref(), h.as_ref(), &config);
}

#[test]
fn a_context_keeps_the_kind_underneath() {
    let err = Bits::new(1).unwrap_err().context("resolving the quantizer");
    assert_eq!(err.to_string(), "resolving the quantizer");
    assert!(matches!(err.root(), Error::Config(_)), "{err:?}");
    let source = err.source().expect("the cause is the source");
    assert_eq!(source.to_string(), "bits must be 2 to 8, got 1");
}

/// `qpeft … | head`: output into a pipe whose reader has gone ends the process by SIGPIPE, as
/// for any Unix tool, instead of a panic ("failed printing to stdout").
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qpeft"))
        .args(["model", "inspect", "--model"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-bert"
        ))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}
