//! The compiler: a loaded float [`Model`] and calibration images in, an integer [`Circuit`] out.
//!
//! Passes, each a function from one well-formed value to the next, each followed by a check of
//! the circuit ([`Circuit::check`]):
//! 1. [`options`]: resolve the options against the model;
//! 2. [`lower`]: the model's nodes to layers; on the way, for every linear layer, [`quantize`] its
//!    weights (symmetric, per output channel), [`range`] its accumulators on the calibration images
//!    and in the worst case, plan their [`window`] (calibrated plus a margin, or worst case; gains
//!    and centring offsets), and [`fuse`] bias, cp, the square, ap, batch norm and requantization
//!    into one table per channel; the last layer's scores are sized by [`output`];
//! 3. link encodings: each tensor encoded with the width its readers need;
//! 4. [`choose`] parameters: the cheapest TFHE set whose every bootstrap meets p-fail <= 2^-64
//!    ([`noise`]). A circuit no set can run exactly keeps `params: None` and the refusal, naming
//!    the layer and its widths: the clear evaluator can still study it, but every encrypted use is
//!    refused with that message.

mod choose;
mod fuse;
mod lower;
pub mod noise;
mod options;
mod output;
mod quantize;
mod range;
mod window;

pub use choose::{candidates, choose_params, Candidate};
pub use options::{CompileOptions, DEFAULT_ACT_CLIP, DEFAULT_MARGIN};

use crate::circuit::{Circuit, Layer, CIRCUIT_VERSION};
use crate::error::{Error, Result};
use crate::model::Model;

pub fn compile(model: &Model, calibration: &[Vec<u8>], options: &CompileOptions) -> Result<Circuit> {
    if calibration.is_empty() {
        return Err(Error::Compile("no calibration images".into()));
    }
    let options = options::resolve_options(model, options)?;
    let lowered = lower::lower(model, calibration, &options)?;
    let mut circuit = Circuit {
        version: CIRCUIT_VERSION,
        name: model.arch.name.clone(),
        input: lowered.input,
        layers: lowered.layers,
        output: lowered.output,
        params: None,
        refusal: None,
    };
    checked(&circuit, "lowering")?;
    link_encodings(&mut circuit);
    checked(&circuit, "encoding")?;
    match choose_params(&mut circuit) {
        Ok(params) => circuit.params = Some(params),
        Err(why) => circuit.refusal = Some(why),
    }
    checked(&circuit, "parameter choice")?;
    Ok(circuit)
}

/// The check after a pass: an ill-formed circuit is the compiler's bug, reported as such.
fn checked(circuit: &Circuit, pass: &str) -> Result<()> {
    circuit
        .check()
        .map_err(|why| Error::Compile(format!("internal error after {pass}: {why}")))
}

/// Set the input's and each table's output encoding to the width its readers need.
fn link_encodings(circuit: &mut Circuit) {
    let enc = circuit.tensor_encodings();
    circuit.input.encoding_bits = enc[0];
    for (i, layer) in circuit.layers.iter_mut().enumerate() {
        if let Layer::Requant(r) = layer {
            r.output_encoding_bits = enc[i + 1];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::quantize_pixels;
    use crate::eval::clear;
    use crate::io::resolve::{resolve_calibration, resolve_model};

    /// The first 100 shipped calibration images.
    fn calibration() -> Vec<Vec<u8>> {
        let path = resolve_calibration(&resolve_model("tiny-pkn").unwrap()).unwrap();
        let mut images = crate::io::idx::read_images(&path).unwrap();
        images.truncate(100);
        images
    }

    fn shipped(name: &str, options: &CompileOptions) -> Circuit {
        let model = crate::model::load_model(&resolve_model(name).unwrap()).unwrap();
        compile(&model, &calibration(), options).unwrap()
    }

    #[test]
    fn peak_live_ciphertexts_are_a_linear_layers_input_and_output() {
        // tiny-pkn: the 784 encrypted pixels and conv1's 784 accumulators; its tables then write
        // over the accumulators, and conv2 reads 784 and writes 392.
        let tiny = shipped("tiny-pkn", &CompileOptions::default());
        assert_eq!(tiny.layers[0].output_shape().len(), 784);
        assert_eq!(tiny.peak_live_ciphertexts(), (784 + 784, 0));
        // cnn-pkn: conv1's 9,216 table outputs and the 2,304 sums of the pool that reads them.
        let cnn = shipped("cnn-pkn", &CompileOptions::default());
        assert_eq!(cnn.peak_live_ciphertexts(), (9216 + 2304, 2));
    }

    #[test]
    fn calibrated_output_window_keeps_twice_the_calibrated_scores() {
        let calibrated = shipped("cnn-pkn", &CompileOptions::default());
        let worst = shipped(
            "cnn-pkn",
            &CompileOptions {
                worst_case: true,
                ..Default::default()
            },
        );
        assert!(
            calibrated.output.bits < worst.output.bits,
            "calibrated {} bits, worst case {}",
            calibrated.output.bits,
            worst.output.bits
        );
        let half = 1i64 << (calibrated.output.bits - 1);
        for image in &calibration() {
            let input = quantize_pixels(image, calibrated.input.bits);
            for score in clear::run(&calibrated, &input) {
                assert!(
                    score.abs() <= half,
                    "score {score} beyond half the {}-bit window",
                    calibrated.output.bits
                );
            }
        }
    }
}
