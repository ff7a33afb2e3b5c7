//! Files: the versioned container every pkn file uses, PNG images, IDX data sets, model lookup.

pub mod checkpoint;
pub mod container;
pub mod idx;
pub mod image;
pub mod payload;
pub mod resolve;
