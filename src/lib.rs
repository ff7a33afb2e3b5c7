//! pkn: exact encrypted inference for PolyKervNets.
//!
//! A trained PKN (safetensors) is compiled into a quantized integer [`circuit::Circuit`];
//! [`eval::clear`] runs it on plaintext integers and [`eval::fhe`] runs the very same circuit
//! on TFHE ciphertexts, bit for bit.

pub mod circuit;
pub mod cli;
pub mod compile;
pub mod encoding;
pub mod error;
pub mod eval;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod io;
pub mod keys;
pub mod model;
pub mod params;
pub mod verify;
pub mod zoo;

pub use error::{Error, Result};
