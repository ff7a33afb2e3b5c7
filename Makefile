# pkn: the two commands a new user needs are `make demo` and `make test`.
BIN := target/release/pkn
SAMPLE := samples/test-1-pullover.png

.PHONY: build gpu demo test bench lint clean

build:
	cargo build --release

# pkn with the bootstraps on an NVIDIA GPU (`pkn infer --gpu`), built without one: CUDA 13.0 from
# PyPI wheels in target/cuda-venv, binary and libcudart.so.13 in target/gpu/release/ (docs/gpu.md).
gpu:
	bash scripts/build-gpu.sh

# Real encrypted inference on the bundled sample with the default model (tiny-pkn), in demo/,
# then the clear integer reference on the same image, which the decrypted result must equal.
demo: build
	mkdir -p demo
	cd demo && ../$(BIN) keygen --force && ../$(BIN) encrypt ../$(SAMPLE) && ../$(BIN) infer && ../$(BIN) decrypt
	cd demo && ../$(BIN) infer --clear ../$(SAMPLE)

# Unit tests, then the FHE exactness and CLI integration tests (release mode: FHE is slow in debug).
test:
	cargo test --release

# The GPU engine is type-checked and linted too, without CUDA: DOCS_RS=1 makes tfhe's CUDA backend
# skip its CUDA build (nothing is linked), in its own target directory so no real build reuses that.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	DOCS_RS=1 cargo clippy --all-targets --features gpu --target-dir target/gpu-check -- -D warnings
	bash scripts/check-history.sh

# The cnn-pkn whole run takes about half an hour on 2 cores.
bench:
	cargo bench --bench fhe
	bash benches/whole_run.sh tiny-pkn
	bash benches/whole_run.sh cnn-pkn

clean:
	rm -rf demo target
