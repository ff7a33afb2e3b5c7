use std::path::PathBuf;

use anyhow::Context;

use super::{ModelArgs, DEFAULT_CLIENT_KEY, DEFAULT_INPUT};
use crate::encoding::quantize_pixels;
use crate::io::container::{self, Ids, Kind};
use crate::io::image::load_gray_png;
use crate::io::payload::EncryptedInput;
use crate::keys::ClientKey;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// 8-bit PNG of the model's input size (colour is converted to gray).
    pub image: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The client (secret) key.
    #[arg(long, default_value = DEFAULT_CLIENT_KEY)]
    pub key: PathBuf,
    /// Where to write the encrypted image.
    #[arg(short, long, default_value = DEFAULT_INPUT)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let circuit = a.model.circuit()?;
    let shape = circuit.input.shape;
    if shape.channels != 1 {
        anyhow::bail!(
            "model {} takes {} channels; only grayscale models are supported",
            circuit.name,
            shape.channels
        );
    }
    let params = circuit.fhe_params()?;
    let pixels = load_gray_png(&a.image, shape.width, shape.height)?;
    let (_, key): (_, ClientKey) = container::read(&a.key, Kind::ClientKey)?;
    key.check()
        .with_context(|| format!("{} is not a usable client key", a.key.display()))?;
    if key.params != params {
        anyhow::bail!(
            "{} was generated for parameters {}, model {} needs {}; run pkn keygen --model {}",
            a.key.display(),
            key.params.name(),
            circuit.name,
            params.name(),
            a.model.model
        );
    }
    let values = quantize_pixels(&pixels, circuit.input.bits);
    let ciphertexts = key.encrypt(&values, circuit.input.encoding_bits);
    let ids = Ids {
        key: key.key_id,
        model: circuit.id(),
    };
    container::write(
        &a.output,
        Kind::InputCiphertext,
        ids,
        &EncryptedInput { ciphertexts },
        false,
    )?;
    println!(
        "encrypted {} ({} pixels, {} bits each) for {} into {}",
        a.image.display(),
        values.len(),
        circuit.input.bits,
        circuit.name,
        a.output.display()
    );
    Ok(())
}
