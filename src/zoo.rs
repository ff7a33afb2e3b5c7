//! Shipped models: a model found by name or path, with the calibration images shipped beside it.
//! The commands, the fuzz targets, the tests and the benches all load models here, so that they
//! compile the same circuit from the same images.

use std::path::Path;

use crate::circuit::Circuit;
use crate::compile::{compile, CompileOptions};
use crate::error::Result;
use crate::io::{idx, resolve};
use crate::model::{load_model, Model};

/// The model the commands use when none is named, and the one the tests run encrypted.
pub const DEFAULT_MODEL: &str = "tiny-pkn";

/// A model and the calibration images its windows are measured on.
pub struct Shipped {
    pub model: Model,
    pub calibration: Vec<Vec<u8>>,
}

impl Shipped {
    /// A shipped model's name (looked up in the weights directories) or a model file's path.
    pub fn find(name: &str) -> Result<Self> {
        Self::open(&resolve::resolve_model(name)?)
    }

    /// The model file at `path`, with the calibration images beside it or in the weights directories.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Shipped {
            model: load_model(path)?,
            calibration: idx::read_images(&resolve::resolve_calibration(path)?)?,
        })
    }

    pub fn compile(&self, options: &CompileOptions) -> Result<Circuit> {
        compile(&self.model, &self.calibration, options)
    }
}

/// The model file at `path` compiled with its calibration images.
pub fn compile_model(path: &Path, options: &CompileOptions) -> Result<Circuit> {
    Shipped::open(path)?.compile(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_compiles_with_its_shipped_calibration_images() {
        let shipped = Shipped::find(DEFAULT_MODEL).unwrap();
        assert_eq!(shipped.calibration.len(), 500);
        let circuit = shipped.compile(&CompileOptions::default()).unwrap();
        assert_eq!(circuit.name, DEFAULT_MODEL);
    }

    #[test]
    fn an_unknown_name_is_refused() {
        let err = Shipped::find("no-such-model").err().expect("no such model");
        assert!(err.to_string().contains("no model \"no-such-model\""), "{err}");
    }
}
