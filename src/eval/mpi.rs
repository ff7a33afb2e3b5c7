//! One inference over many processes and machines with MPI (`mpirun -n R pkn infer`, or `srun`):
//! each rank computes an even slice of every layer with its own threads, then an allgather gives
//! every rank the whole tensor ([`Processes`]). Only the main thread calls MPI; rayon's threads
//! only bootstrap.

use std::cell::Cell;
use std::time::Instant;

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{Count, Threading};
use tfhe::core_crypto::prelude::*;

use crate::circuit::Circuit;
use crate::error::{Error, Result};
use crate::eval::fhe::{even_slice, Ciphertexts, Exchanged, Processes};
use crate::params::native_modulus;

/// Bytes per broadcast call: MPI counts elements in a C int.
const BROADCAST_PIECE: usize = 1 << 30;

/// The ranks of the MPI job this process belongs to (a job of one without `mpirun`).
pub struct MpiRanks {
    world: SimpleCommunicator,
    exchanged: Cell<Exchanged>,
    // Finalizes MPI when dropped, so it goes last.
    _universe: Universe,
}

impl MpiRanks {
    /// Join the job; MPI can be initialized once per process.
    pub fn init() -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Mismatch("MPI was already initialized in this process".into()))?;
        Ok(MpiRanks {
            world: universe.world(),
            exchanged: Cell::new(Exchanged::default()),
            _universe: universe,
        })
    }
}

/// `count` as MPI's element count; `check_circuit` has refused larger tensors.
fn mpi_count(count: usize) -> Count {
    Count::try_from(count).expect("tensor sizes were checked against MPI's counts")
}

impl Processes for MpiRanks {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn count(&self) -> usize {
        self.world.size() as usize
    }

    fn gather(&self, mine: Ciphertexts, len: usize) -> Ciphertexts {
        let size = mine.lwe_size().0;
        let ranks = self.count();
        if ranks == 1 {
            return mine;
        }
        let slices: Vec<_> = (0..ranks).map(|r| even_slice(len, ranks, r)).collect();
        let counts: Vec<Count> = slices.iter().map(|s| mpi_count(s.len() * size)).collect();
        let displs: Vec<Count> = slices.iter().map(|s| mpi_count(s.start * size)).collect();
        let mut whole = vec![0u64; len * size];
        // The barrier separates waiting for the slowest rank from moving the bytes.
        let start = Instant::now();
        self.world.barrier();
        let arrived = Instant::now();
        {
            let mut partition = PartitionMut::new(&mut whole[..], counts, displs);
            self.world.all_gather_varcount_into(mine.as_ref(), &mut partition);
        }
        let before = self.exchanged.get();
        self.exchanged.set(Exchanged {
            bytes_sent: before.bytes_sent + (mine.as_ref().len() * 8 * (ranks - 1)) as u64,
            waiting_seconds: before.waiting_seconds + (arrived - start).as_secs_f64(),
            transfer_seconds: before.transfer_seconds + arrived.elapsed().as_secs_f64(),
        });
        LweCiphertextList::from_container(whole, LweSize(size), native_modulus())
    }

    fn broadcast(&self, bytes: Option<Vec<u8>>) -> Vec<u8> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.as_ref().map_or(0, |b| b.len() as u64);
        root.broadcast_into(&mut len);
        let mut bytes = bytes.unwrap_or_else(|| vec![0; len as usize]);
        for piece in bytes.chunks_mut(BROADCAST_PIECE) {
            root.broadcast_into(piece);
        }
        bytes
    }

    fn exchanged(&self) -> Exchanged {
        self.exchanged.get()
    }

    fn abort(&self) -> ! {
        self.world.abort(1)
    }

    /// A tensor that one allgather cannot move (MPI counts elements in a C int) is refused.
    fn check_circuit(&self, circuit: &Circuit, lwe_size: usize) -> Result<()> {
        for (i, layer) in circuit.layers.iter().enumerate() {
            let words = layer.output_shape().len().saturating_mul(lwe_size);
            if Count::try_from(words).is_err() {
                return Err(Error::Mismatch(format!(
                    "layer {i}'s output holds {words} 64-bit words, more than one MPI exchange can move ({})",
                    Count::MAX
                )));
            }
        }
        Ok(())
    }
}
