//! The bodies of the fuzz targets in `fuzz/`, kept here so that `tests/fuzz_corpus.rs` replays
//! the committed corpus and crash inputs through the very same code on stable Rust.
//!
//! Each body must return normally on every input: a panic, an abort on allocation or a hang is
//! a bug in the reader it drives. Errors are the expected outcome and are ignored.

use std::path::Path;
use std::sync::OnceLock;

use crate::circuit::Circuit;
use crate::compile::{compile, CompileOptions};
use crate::eval::fhe::EncryptedState;
use crate::io::checkpoint::{resume_from_bytes, Expected};
use crate::io::container::{self, Ids, Kind};
use crate::io::payload::{EncryptedInput, EncryptedOutput};
use crate::io::{idx, image};
use crate::keys::{ClientKey, ServerKey};
use crate::params::FheParams;
use crate::zoo::{Shipped, DEFAULT_MODEL};

/// The name fuzz inputs carry in error messages.
const INPUT: &str = "(fuzz input)";
/// Calibration images the model target compiles with: enough to exercise calibration, few
/// enough to keep an execution in milliseconds.
const CALIBRATION_IMAGES: usize = 2;
/// Container kinds in the order the first input byte selects them.
const KINDS: [Kind; 5] = [
    Kind::ClientKey,
    Kind::ServerKey,
    Kind::InputCiphertext,
    Kind::OutputCiphertext,
    Kind::Checkpoint,
];
/// Ids the container target writes into every header, and the checkpoint target expects.
const IDS: Ids = Ids {
    key: [0; 16],
    model: [0; 16],
};

/// The default shipped model with its first [`CALIBRATION_IMAGES`] calibration images.
fn shipped() -> &'static Shipped {
    static SHIPPED: OnceLock<Shipped> = OnceLock::new();
    SHIPPED.get_or_init(|| {
        let mut shipped = Shipped::find(DEFAULT_MODEL).expect("shipped model and calibration images");
        shipped.calibration.truncate(CALIBRATION_IMAGES);
        shipped
    })
}

/// The shipped model's circuit, which checkpoints are judged against.
fn shipped_circuit() -> &'static Circuit {
    static CIRCUIT: OnceLock<Circuit> = OnceLock::new();
    CIRCUIT.get_or_init(|| {
        shipped()
            .compile(&CompileOptions::default())
            .expect("shipped model compiles")
    })
}

/// Model loader (safetensors, metadata, architecture), then the compiler on what loads.
pub fn model(data: &[u8]) {
    if let Ok(model) = crate::model::parse_model(data) {
        let _ = compile(&model, &shipped().calibration, &CompileOptions::default());
    }
}

/// Container reader and payload checks. The first byte selects the kind and the parameter set;
/// the rest is the payload, framed behind a valid header so that the checksum never hides it.
pub fn container(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let kind = KINDS[selector as usize % KINDS.len()];
    let params = FheParams::candidates()[selector as usize / KINDS.len() % FheParams::candidates().len()];
    let bytes = container::frame(kind, IDS, payload);
    let path = Path::new(INPUT);
    match kind {
        Kind::ClientKey => {
            if let Ok((_, key)) = container::decode::<ClientKey>(path, &bytes, kind) {
                if key.check().is_ok() {
                    let cts = key.encrypt(&[1, -2], 4).par_decompress_into_lwe_ciphertext_list();
                    key.decrypt(&cts, 4);
                }
            }
        }
        Kind::ServerKey => {
            // A key that passes the check is 30 MB or more, beyond any fuzz input: expanding
            // it is left to the encrypted tests.
            if let Ok((_, key)) = container::decode::<ServerKey>(path, &bytes, kind) {
                let _ = key.check();
            }
        }
        Kind::InputCiphertext => {
            if let Ok((_, input)) = container::decode::<EncryptedInput>(path, &bytes, kind) {
                let _ = input.into_ciphertexts(&params, shipped_circuit().input.shape.len());
            }
        }
        Kind::OutputCiphertext => {
            if let Ok((_, output)) = container::decode::<EncryptedOutput>(path, &bytes, kind) {
                let _ = output.check(&params);
            }
        }
        Kind::Checkpoint => {
            let expected = Expected {
                ids: IDS,
                input_digest: [0; 32],
            };
            let lwe_size = params.big_lwe_dimension() + 1;
            resume_from_bytes(path, &bytes, &expected, |state: &EncryptedState| {
                state.fits_circuit(shipped_circuit(), lwe_size)
            });
        }
    }
}

/// PNG reader at the shipped model's input size.
pub fn png(data: &[u8]) {
    let _ = image::decode_gray_png(Path::new(INPUT), data, 28, 28);
}

/// IDX reader (plain or gzipped), then the split into images.
pub fn idx(data: &[u8]) {
    let path = Path::new(INPUT);
    if let Ok((dims, values)) = idx::parse_idx(path, data) {
        let _ = idx::images(path, &dims, &values);
    }
}
