//! Finding shipped models: `--model` takes a path or the name of a model in a weights directory.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// File of calibration images shipped beside the models (first 500 Fashion-MNIST training images).
pub const CALIBRATION_FILE: &str = "calibration-images.idx";

/// Directories searched for shipped models, in order: $PKN_WEIGHTS, ./weights, the source tree's weights/.
pub fn weights_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PKN_WEIGHTS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("weights"));
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("weights"));
    dirs
}

/// Resolve `--model`: an existing file, else `<dir>/<name>.safetensors` in the weights directories.
pub fn resolve_model(name: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(name);
    if direct.is_file() {
        return Ok(direct);
    }
    let dirs = weights_dirs();
    dirs.iter()
        .map(|d| d.join(format!("{name}.safetensors")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            Error::Model(format!(
                "no model {name:?}: not a file, and no {name}.safetensors in {}",
                searched.join(", ")
            ))
        })
}

/// The calibration images for a model: beside the model file, else in the weights directories.
pub fn resolve_calibration(model_path: &Path) -> Result<PathBuf> {
    let beside = model_path.parent().map(|d| d.join(CALIBRATION_FILE));
    beside
        .into_iter()
        .chain(weights_dirs().into_iter().map(|d| d.join(CALIBRATION_FILE)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Model(format!(
                "calibration images ({CALIBRATION_FILE}) not found beside the model or in weights/"
            ))
        })
}
