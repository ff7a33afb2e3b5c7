use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::output::{bootstrap_bar, Output};
use super::ModelArgs;
use crate::circuit::Circuit;
use crate::encoding::quantize_pixels;
use crate::eval::{clear, fhe};
use crate::io::idx::{self, DEFAULT_DATA_DIR};
use crate::keys::ClientKey;
use crate::verify::fhe_matches_clear;

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
    /// Print the results as one JSON document (docs/json.md); the lines go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// What `pkn eval` found; its text goes out line by line as each part is known.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    clear: Accuracy,
    /// The `--fhe` check; None without it.
    fhe: Option<Encrypted>,
}

/// Accuracy of the integer circuit on the test images.
#[derive(Serialize)]
struct Accuracy {
    model: String,
    images: usize,
    correct: usize,
    /// `correct / images` (0 for no images).
    accuracy: f64,
}

/// One encrypted test image.
#[derive(Serialize)]
struct Verdict {
    image: usize,
    bit_exact: bool,
    predicted: usize,
    label: u8,
    seconds: f64,
}

/// The encrypted images: each one's verdict, how many match the clear circuit, the time per image.
#[derive(Serialize)]
struct Encrypted {
    images: usize,
    matches: usize,
    correct: usize,
    seconds_per_image: f64,
    verdicts: Vec<Verdict>,
}

impl fmt::Display for Accuracy {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}: integer-circuit accuracy {:.2} % ({}/{} test images)",
            self.model,
            100.0 * self.accuracy,
            self.correct,
            self.images
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let verdict = if self.bit_exact {
            "bit-exact"
        } else {
            "DIFFERS from the clear circuit"
        };
        write!(
            f,
            "test image {}: {verdict}, predicted {}, label {}, {:.1} s",
            self.image, self.predicted, self.label, self.seconds
        )
    }
}

impl fmt::Display for Encrypted {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.images;
        write!(
            f,
            "encrypted: {}/{n} bit-exact with the clear circuit, accuracy {}/{n}, {:.1} s per image",
            self.matches, self.correct, self.seconds_per_image
        )
    }
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
    let out = Output::new(a.json);
    let bar = indicatif::ProgressBar::new(images.len() as u64);
    let correct = images
        .par_iter()
        .zip(&labels)
        .filter(|(img, &label)| {
            let scores = clear::run(&circuit, &quantize_pixels(img, circuit.input.bits));
            bar.inc(1);
            clear::argmax(&scores) == label as usize
        })
        .count();
    bar.finish_and_clear();
    let clear = Accuracy {
        model: circuit.name.clone(),
        images: images.len(),
        correct,
        accuracy: correct as f64 / images.len().max(1) as f64,
    };
    out.note(&clear);
    let mut report = Report { clear, fhe: None };
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
        let encrypted = check_fhe(
            &circuit,
            a.fhe_start,
            &images[a.fhe_start..end],
            &labels[a.fhe_start..end],
            out,
        )?;
        out.note(&encrypted);
        report.fhe = Some(encrypted);
    }
    out.document(&report)?;
    match report.fhe {
        Some(e) if e.matches != e.images => {
            anyhow::bail!(
                "{} encrypted results differ from the clear circuit",
                e.images - e.matches
            )
        }
        _ => Ok(()),
    }
}

/// Encrypted inference on `images` (test images `first..`) with fresh keys: bit-exact matches with
/// the clear circuit, encrypted accuracy and time per image. Each image's verdict is printed as soon
/// as it is known, so an interrupted check still leaves its evidence.
fn check_fhe(
    circuit: &Circuit,
    first: usize,
    images: &[Vec<u8>],
    labels: &[u8],
    out: Output,
) -> anyhow::Result<Encrypted> {
    let (client, server) = ClientKey::generate(circuit.fhe_params()?);
    let key = server.expand();
    let engine = fhe::Engine::new(&key);
    let (pbs, _) = circuit.pbs_counts();
    let bar = bootstrap_bar(pbs * images.len() as u64, "encrypted".into());
    let start = Instant::now();
    let mut verdicts = Vec::new();
    for (i, (img, &label)) in images.iter().zip(labels).enumerate() {
        let image_start = Instant::now();
        let input = quantize_pixels(img, circuit.input.bits);
        let result = fhe_matches_clear(circuit, &client, &engine, &input, Some(&bar));
        let verdict = Verdict {
            image: first + i,
            bit_exact: result.exact(),
            predicted: clear::argmax(&result.fhe),
            label,
            seconds: image_start.elapsed().as_secs_f64(),
        };
        bar.suspend(|| out.note(&verdict));
        verdicts.push(verdict);
    }
    bar.finish_and_clear();
    let n = images.len();
    Ok(Encrypted {
        images: n,
        matches: verdicts.iter().filter(|v| v.bit_exact).count(),
        correct: verdicts.iter().filter(|v| v.predicted == v.label as usize).count(),
        seconds_per_image: start.elapsed().as_secs_f64() / n as f64,
        verdicts,
    })
}
