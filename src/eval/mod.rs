//! Evaluators of the integer circuit: the clear reference and the encrypted one.

pub mod clear;
pub mod fhe;
#[cfg(feature = "gpu")]
pub mod gpu;
