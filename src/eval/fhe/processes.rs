//! The processes that share one inference. Each layer's outputs are split over them in even
//! contiguous slices: every process computes its slice (the linear step and the bootstrap rounds,
//! with its own threads), then all of them gather the whole tensor, which the next layer reads.
//! One process alone is [`SingleProcess`]; `mpirun` starts one per rank (`crate::eval::mpi`).

use std::ops::Range;

use tfhe::core_crypto::prelude::*;

use super::driver::EncryptedState;
use super::Ciphertexts;
use crate::circuit::Circuit;
use crate::error::{Error, Result};
use crate::params::native_modulus;

/// What the processes of one inference exchanged so far, as seen by this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Exchanged {
    /// Bytes of this process's slices, counted once per other process that receives them.
    pub bytes_sent: u64,
    /// Seconds spent waiting for the slower processes to reach each exchange.
    pub waiting_seconds: f64,
    /// Seconds spent moving the slices, once every process was there.
    pub transfer_seconds: f64,
}

impl Exchanged {
    /// What was exchanged since `before`.
    pub fn since(self, before: Exchanged) -> Exchanged {
        Exchanged {
            bytes_sent: self.bytes_sent - before.bytes_sent,
            waiting_seconds: self.waiting_seconds - before.waiting_seconds,
            transfer_seconds: self.transfer_seconds - before.transfer_seconds,
        }
    }
}

/// The processes that share one inference, in rank order; process 0 reads the input and writes
/// the output and the checkpoints.
pub trait Processes {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;

    /// How many processes share the inference.
    fn count(&self) -> usize;

    /// The whole tensor of `len` ciphertexts on every process, from each process's slice
    /// ([`Processes::slice`]); `mine` is this process's.
    fn gather(&self, mine: Ciphertexts, len: usize) -> Ciphertexts;

    /// Process 0's bytes (`Some` there, `None` elsewhere) on every process.
    fn broadcast(&self, bytes: Option<Vec<u8>>) -> Vec<u8>;

    /// What this process exchanged so far.
    fn exchanged(&self) -> Exchanged;

    /// Ends every process of the inference at once, after a failure on this one.
    fn abort(&self) -> !;

    /// Refuses, before any work, a circuit these processes cannot exchange (ciphertexts of
    /// `lwe_size` words).
    fn check_circuit(&self, _circuit: &Circuit, _lwe_size: usize) -> Result<()> {
        Ok(())
    }

    /// The outputs `0..len` of a layer that this process computes.
    fn slice(&self, len: usize) -> Range<usize> {
        even_slice(len, self.count(), self.rank())
    }
}

/// Slice `rank` of `0..len` cut into `count` contiguous slices whose lengths differ by at most one,
/// the longer ones first.
pub fn even_slice(len: usize, count: usize, rank: usize) -> Range<usize> {
    let (base, longer) = (len / count, len % count);
    let start = rank * base + rank.min(longer);
    start..start + base + usize::from(rank < longer)
}

/// One process computes every output; nothing is exchanged.
pub struct SingleProcess;

impl Processes for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn count(&self) -> usize {
        1
    }

    fn gather(&self, mine: Ciphertexts, _len: usize) -> Ciphertexts {
        mine
    }

    fn broadcast(&self, bytes: Option<Vec<u8>>) -> Vec<u8> {
        bytes.expect("the one process is process 0")
    }

    fn exchanged(&self) -> Exchanged {
        Exchanged::default()
    }

    fn abort(&self) -> ! {
        std::process::exit(1)
    }
}

/// The ciphertexts `range` of a tensor that holds either all of them or exactly those.
pub fn own_slice(tensor: Ciphertexts, range: &Range<usize>) -> Ciphertexts {
    if tensor.lwe_ciphertext_count().0 == range.len() {
        return tensor;
    }
    let size = tensor.lwe_size().0;
    let words = tensor.as_ref()[range.start * size..range.end * size].to_vec();
    LweCiphertextList::from_container(words, LweSize(size), native_modulus())
}

/// The state an inference starts from, held by process 0 (`Some` there), on every process.
pub fn share_state(processes: &dyn Processes, state: Option<EncryptedState>) -> Result<EncryptedState> {
    if processes.count() == 1 {
        return Ok(state.expect("the one process is process 0"));
    }
    let bytes = state.map(|s| bincode::serialize(&s).expect("a state serializes"));
    bincode::deserialize(&processes.broadcast(bytes))
        .map_err(|e| Error::malformed("state from process 0", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_slices_cover_every_output_once_in_rank_order() {
        for len in [0, 1, 5, 784, 1001] {
            for count in 1..=7 {
                let slices: Vec<_> = (0..count).map(|r| even_slice(len, count, r)).collect();
                assert_eq!(slices[0].start, 0);
                assert_eq!(slices[count - 1].end, len);
                for pair in slices.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() == pair[1].len() || pair[0].len() == pair[1].len() + 1);
                }
            }
        }
    }
}
