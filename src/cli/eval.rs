use std::path::PathBuf;

use rayon::prelude::*;

use std::time::Instant;

use super::ModelArgs;
use crate::circuit::Circuit;
use crate::eval::{clear, fhe};
use crate::io::idx::{self, DEFAULT_DATA_DIR};
use crate::keys::ClientKey;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory with t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data: PathBuf,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also run K images encrypted (fresh keys) and count bit-exact matches with the clear circuit.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub fhe: usize,
    /// Index of the first test image that `--fhe` runs encrypted (long checks can go on where one stopped).
    #[arg(long, value_name = "I", default_value_t = 0, requires = "fhe")]
    pub fhe_start: usize,
}

fn find(dir: &std::path::Path, stem: &str) -> anyhow::Result<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{stem}(.gz) not found in {} (install dataset-fashion-mnist or pass --data)",
                dir.display()
            )
        })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let circuit = a.model.circuit()?;
    let mut images = idx::read_images(&find(&a.data, "t10k-images-idx3-ubyte")?)?;
    let mut labels = idx::read_labels(&find(&a.data, "t10k-labels-idx1-ubyte")?)?;
    if images.len() != labels.len() {
        anyhow::bail!("{} images but {} labels", images.len(), labels.len());
    }
    if let Some(n) = a.limit {
        images.truncate(n);
        labels.truncate(n);
    }
    let bar = indicatif::ProgressBar::new(images.len() as u64);
    let correct = images
        .par_iter()
        .zip(&labels)
        .filter(|(img, &label)| {
            let scores = clear::run(&circuit, &clear::quantize_pixels(img, circuit.input.bits));
            bar.inc(1);
            clear::argmax(&scores) == label as usize
        })
        .count();
    bar.finish_and_clear();
    println!(
        "{}: integer-circuit accuracy {:.2} % ({correct}/{} test images)",
        circuit.name,
        100.0 * correct as f64 / images.len().max(1) as f64,
        images.len()
    );
    if a.fhe > 0 {
        let end = a.fhe_start.saturating_add(a.fhe);
        if end > images.len() {
            anyhow::bail!(
                "--fhe-start {} --fhe {} needs {end} test images, only {} are evaluated",
                a.fhe_start,
                a.fhe,
                images.len()
            );
        }
        check_fhe(
            &circuit,
            a.fhe_start,
            &images[a.fhe_start..end],
            &labels[a.fhe_start..end],
        )?;
    }
    Ok(())
}

/// Encrypted inference on `images` (test images `first..`) with fresh keys: bit-exact matches with
/// the clear circuit, encrypted accuracy and time per image. Each image's verdict is printed as soon
/// as it is known, so an interrupted check still leaves its evidence.
fn check_fhe(circuit: &Circuit, first: usize, images: &[Vec<u8>], labels: &[u8]) -> anyhow::Result<()> {
    let (client, server) = ClientKey::generate(circuit.fhe_params()?);
    let key = server.expand();
    let (pbs, _) = circuit.pbs_counts();
    let bar = indicatif::ProgressBar::new(pbs * images.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("encrypted [{bar:40}] {pos}/{len} bootstraps, ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let (mut matches, mut correct) = (0, 0);
    let start = Instant::now();
    for (i, (img, &label)) in images.iter().zip(labels).enumerate() {
        let image_start = Instant::now();
        let input = clear::quantize_pixels(img, circuit.input.bits);
        let cts = client
            .encrypt(&input, circuit.input.encoding_bits)
            .par_decompress_into_lwe_ciphertext_list();
        let got = client.decrypt(&fhe::run(circuit, &key, cts, Some(&bar)), circuit.output.bits);
        let exact = got == clear::run(circuit, &input);
        let predicted = clear::argmax(&got);
        matches += usize::from(exact);
        correct += usize::from(predicted == label as usize);
        let verdict = if exact {
            "bit-exact"
        } else {
            "DIFFERS from the clear circuit"
        };
        bar.suspend(|| {
            println!(
                "test image {}: {verdict}, predicted {predicted}, label {label}, {:.1} s",
                first + i,
                image_start.elapsed().as_secs_f64()
            )
        });
    }
    bar.finish_and_clear();
    let n = images.len();
    println!(
        "encrypted: {matches}/{n} bit-exact with the clear circuit, accuracy {correct}/{n}, {:.1} s per image",
        start.elapsed().as_secs_f64() / n as f64
    );
    if matches != n {
        anyhow::bail!("{} encrypted results differ from the clear circuit", n - matches);
    }
    Ok(())
}
