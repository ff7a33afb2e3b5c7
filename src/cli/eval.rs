use std::path::PathBuf;

use rayon::prelude::*;

use super::ModelArgs;
use crate::eval::clear;
use crate::io::idx::{self, DEFAULT_DATA_DIR};

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
    Ok(())
}
