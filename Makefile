# pkn: the two commands a new user needs are `make demo` and `make test`.
BIN := target/release/pkn
SAMPLE := samples/test-1-pullover.png

.PHONY: build gpu mpi demo test test-all test-mpi bench lint clean

build:
	cargo build --release

# pkn with the bootstraps on an NVIDIA GPU (`pkn infer --gpu`), built without one: CUDA 13.0 from
# PyPI wheels in target/cuda-venv, binary and libcudart.so.13 in target/gpu/release/ (docs/gpu.md).
gpu:
	bash scripts/build-gpu.sh

# pkn for many processes and machines, `mpirun -n R target/mpi/release/pkn infer` (docs/scale-out.md):
# needs an MPI library and libclang (Debian: libopenmpi-dev openmpi-bin libclang-dev).
MPI_TARGET := --target-dir target/mpi
mpi:
	cargo build --release --features mpi $(MPI_TARGET)

# Real encrypted inference on the bundled sample with the default model (tiny-pkn), in demo/,
# then the clear integer reference on the same image, which the decrypted result must equal.
demo: build
	mkdir -p demo
	cd demo && ../$(BIN) keygen --force && ../$(BIN) encrypt ../$(SAMPLE) && ../$(BIN) infer && ../$(BIN) decrypt
	cd demo && ../$(BIN) infer --clear ../$(SAMPLE)

# Release mode: FHE is slow in debug. `make test`: the unit tests, FHE == clear on one real image
# through the library and one through the four commands, every truncation edge test, every
# bad-input test, checkpoints and the fuzz corpus (at most about 10 minutes on 2 cores after the
# build). `make test-all` (CI) adds tests/long_runs.rs (more images, resume after SIGKILL, eval
# --fhe), the residual network encrypted and the noise statistics.
# A new file under tests/ goes into one of the two lists.
QUICK_TESTS := --lib --test cli --test fhe_exact --test truncation --test checkpoint --test fuzz_corpus
LONG_TESTS := --test long_runs --test residual --test noise

test:
	cargo test --release --features fuzzing $(QUICK_TESTS)

test-all: test
	cargo test --release --features fuzzing $(LONG_TESTS)

# tiny-pkn under `mpirun -n 2` against one process and the clear circuit (CI runs it after test-all).
test-mpi:
	cargo test --release --features mpi $(MPI_TARGET) --test mpi

# The GPU and MPI engines are type-checked and linted too, without CUDA: DOCS_RS=1 makes tfhe's CUDA
# backend skip its CUDA build (nothing is linked), in its own target directory so no real build
# reuses that. The MPI bindings need an MPI library and libclang (see `mpi`).
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets --features fuzzing -- -D warnings
	DOCS_RS=1 cargo clippy --all-targets --features gpu,mpi,fuzzing --target-dir target/gpu-check -- -D warnings
	bash scripts/check-history.sh

# The cnn-pkn whole run takes about half an hour on 2 cores.
bench:
	cargo bench --bench fhe
	bash benches/whole_run.sh tiny-pkn
	bash benches/whole_run.sh cnn-pkn

clean:
	rm -rf demo target

# Training (docs/training.md): PyTorch in train/.venv (pip install -e train/) or TRAIN_PYTHON,
# Fashion-MNIST from the Debian package dataset-fashion-mnist; not part of `make test` or CI.
# Each train-* target runs the recipe of the shipped weights/MODEL.safetensors and writes
# $(TRAIN_OUT)/MODEL.safetensors instead (copy it to weights/ to ship it). TRAIN_FLAGS is appended
# to every training command (a smoke run: TRAIN_FLAGS='--train-images 512 --test-images 256').
.PHONY: train-tiny-pkn train-cnn-pkn train-resnet18-pkn check-emulation
TRAIN_PYTHON ?= $(if $(wildcard train/.venv/bin/python),train/.venv/bin/python,python3)
TRAIN_OUT ?= train/out
TRAIN_FLAGS ?=
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
TRAIN := $(TRAIN_PYTHON) -m train.train --data $(FASHION_MNIST)

# 15 epochs with moving windows, 5 fine-tuning under the calibrated circuit; 4-bit everything.
train-tiny-pkn:
	$(TRAIN) tiny-pkn --epochs 15 --finetune 5 --margin 0.1 --act-clip 0.001 \
	    --out $(TRAIN_OUT)/tiny-pkn.safetensors $(TRAIN_FLAGS)

# 12 float epochs; 6 fine-tuning epochs under the circuit with a 5-bit conv1 table; 4 more under
# 4-bit tables on both layers (the shipped circuit). Intermediate models stay in $(TRAIN_OUT).
train-cnn-pkn:
	$(TRAIN) cnn-pkn --float-epochs 12 --float-lr 2e-3 --save-float $(TRAIN_OUT)/cnn-pkn-float.safetensors \
	    --epochs 0 --finetune 0 --out $(TRAIN_OUT)/cnn-pkn-float-quantized.safetensors $(TRAIN_FLAGS)
	$(TRAIN) cnn-pkn --init $(TRAIN_OUT)/cnn-pkn-float.safetensors --epochs 0 --finetune 6 --margin 0.1 \
	    --lr 2e-3 --input-bits 3 --weight-bits 4 --act-bits 4 --lut-bits conv1=5 --export-margin 0.0 \
	    --out $(TRAIN_OUT)/cnn-pkn-5bit-conv1.safetensors $(TRAIN_FLAGS)
	$(TRAIN) cnn-pkn --init $(TRAIN_OUT)/cnn-pkn-5bit-conv1.safetensors --epochs 0 --finetune 4 --margin 0.0 \
	    --lr 5e-4 --seed 1 --input-bits 3 --weight-bits 4 --act-bits 4 --lut-bits 4 --export-margin 0.0 \
	    --out $(TRAIN_OUT)/cnn-pkn.safetensors $(TRAIN_FLAGS)

# A stride-2 stem and a stride-2 first block (stages at 7x7 down to 1x1); 15 float epochs with
# augmentation, quantized by the compiler (no fine-tuning) with 5-bit tables and clip 0.003. On a
# GPU if PyTorch sees one; about 30 minutes on 2 cores. The checkpoint in $(TRAIN_OUT) lets a
# stopped run continue (run it again).
train-resnet18-pkn:
	$(TRAIN) resnet18-pkn --stem-stride 2 --stage1-stride 2 --augment --keep-optimizer --float-epochs 15 \
	    --float-lr 1e-3 --epochs 0 --finetune 0 --input-bits 4 --margin 0.1 --lut-bits 5 --act-clip 0.003 \
	    --checkpoint $(TRAIN_OUT)/resnet18-pkn.ckpt --out $(TRAIN_OUT)/resnet18-pkn.safetensors $(TRAIN_FLAGS)

# The PyTorch emulation against `pkn infer --clear`, score for score on 20 test images each: the two
# small shipped models and a random residual network. Exits non-zero on any difference.
check-emulation: build
	$(TRAIN_PYTHON) -m train.check_circuit weights/tiny-pkn.safetensors --images 20 --pkn $(BIN) --data $(FASHION_MNIST)
	$(TRAIN_PYTHON) -m train.check_circuit weights/cnn-pkn.safetensors --images 20 --pkn $(BIN) --data $(FASHION_MNIST)
	$(TRAIN_PYTHON) -m train.check_circuit --random-residual $(TRAIN_OUT)/random-residual.safetensors --images 20 \
	    --pkn $(BIN) --data $(FASHION_MNIST)
