//! The FHE evaluator: the circuit on LWE ciphertexts, with the evaluation key only.
//!
//! Linear layers are leveled integer sums of ciphertexts ([`linear`]). A table layer first removes
//! the low `s` bits of each accumulator, lowest first, by exact steps (docs/circuit.md): a single
//! bit costs one sign bootstrap, a digit of 2 to 4 bits costs a sign bootstrap that clears the bit
//! above it and a table that returns it; then it bootstraps the remaining W bits through the
//! channel's table (a 5-bit table as a split table, [`SplitLuts`]). The step rules themselves
//! live on [`crate::circuit::TruncStep`]. A layer's activations run in batches of [`BATCH`],
//! spread over rayon's threads; each round of a batch's bootstraps walks the keyswitch key and the
//! bootstrap key once for the whole batch ([`keyswitch_batch`], tfhe's batched blind rotation), so
//! that each piece of key is used [`BATCH`] times while it is in cache.
//!
//! Modules, lowest first: [`primitives`] (batched keyswitch and bootstrap), [`luts`] (accumulators),
//! [`rounds`] (a table layer's rounds, any backend), [`linear`], [`processes`] (each layer split
//! over the processes of one inference), [`driver`] (the whole circuit, resumable), [`single`]
//! (one ciphertext at a time, for tests and benchmarks).

pub mod driver;
pub mod linear;
pub mod luts;
pub mod primitives;
pub mod processes;
pub mod rounds;
pub mod single;

use tfhe::core_crypto::prelude::LweCiphertextListOwned;

pub use driver::{bootstraps_before, gathered_after, resume, run, run_on, EncryptedState};
pub use linear::linear;
pub use luts::{LayerLuts, Luts, SplitLuts, StepLuts};
pub use primitives::{batch_size, keyswitch_batch, Engine, Scratch, BATCH};
pub use processes::{even_slice, share_state, Exchanged, Processes, SingleProcess};
pub use rounds::{requant_rounds, Bootstrapper, DeferredAdd, Round};

/// A tensor of LWE ciphertexts under the big key, one per value.
pub type Ciphertexts = LweCiphertextListOwned<u64>;
