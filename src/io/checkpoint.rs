//! Checkpoints of a running encrypted inference, so that a killed run resumes where it stopped.
//!
//! A run writing `OUT` holds an exclusive lock on `OUT.lock` (released by the OS when the process
//! dies, so a kill -9 leaves no stale lock) and saves its state after every requant layer to
//! `OUT.ckpt`, atomically. The checkpoint records the key and model ids and the SHA-256 of the
//! encrypted input, so it is only ever resumed by the same computation, and a resumed run's result
//! decrypts to exactly an uninterrupted run's.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::container::{self, Ids, Kind};
use crate::circuit::Circuit;
use crate::error::{Error, Result};
use crate::eval::fhe::State;

/// Payload of a checkpoint file: read as an owned [`State`], written from a borrowed one (the
/// same bytes), so saving never copies the live ciphertexts.
#[derive(Serialize, Deserialize)]
struct Checkpoint<S> {
    input_digest: [u8; 32],
    state: S,
}

/// The checkpoint of one output file, with its lock held.
pub struct Checkpointing {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    ids: Ids,
    input_digest: [u8; 32],
}

/// What a run starts from.
pub enum Resume {
    /// A valid checkpoint of this very computation.
    From(State),
    /// No checkpoint, or one that cannot be used (the reason says why).
    Fresh(Option<String>),
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether a saved state holds exactly the tensors the circuit holds before its next layer, with
/// their sizes (compared before anything is computed from them).
fn fits(circuit: &Circuit, state: &State, lwe_size: usize) -> bool {
    let next = state.next_layer;
    if next > circuit.layers.len() || state.slots.len() != circuit.layers.len() + 1 {
        return false;
    }
    let last_uses = circuit.last_uses();
    state.slots.iter().enumerate().all(|(t, slot)| {
        let live = t <= next && last_uses[t] >= next;
        match slot {
            None => !live,
            Some(cts) => {
                live && cts.lwe_size().0 == lwe_size
                    && cts.ciphertext_modulus().is_native_modulus()
                    && circuit.tensor_shape(t).and_then(|s| s.len().checked_mul(lwe_size)) == Some(cts.as_ref().len())
            }
        }
    })
}

/// SHA-256 of a file's bytes: identifies the encrypted input a checkpoint belongs to.
pub fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(bytes).into())
}

/// What a checkpoint must match to be resumed.
pub struct Expected<'a> {
    pub ids: Ids,
    pub input_digest: [u8; 32],
    pub circuit: &'a Circuit,
    /// Size of every ciphertext (the big LWE dimension plus one).
    pub lwe_size: usize,
}

/// [`Checkpointing::load`] on the bytes of a checkpoint file; `path` only names it in messages.
pub fn resume_from_bytes(path: &Path, bytes: &[u8], expected: &Expected) -> Resume {
    judge(path, container::decode(path, bytes, Kind::Checkpoint), expected)
}

/// Whether a decoded checkpoint belongs to this computation and fits its circuit at the layer it
/// names; sizes are compared before anything is computed from them.
fn judge(path: &Path, read: Result<(Ids, Checkpoint<State>)>, expected: &Expected) -> Resume {
    let (ids, saved) = match read {
        Ok(read) => read,
        Err(e) => return Resume::Fresh(Some(format!("unusable checkpoint ({e})"))),
    };
    if ids != expected.ids || saved.input_digest != expected.input_digest {
        return Resume::Fresh(Some(format!(
            "{} belongs to another input, key or model",
            path.display()
        )));
    }
    let state = saved.state;
    if !fits(expected.circuit, &state, expected.lwe_size) {
        return Resume::Fresh(Some(format!(
            "{} does not match the circuit's layer {}",
            path.display(),
            state.next_layer
        )));
    }
    Resume::From(state)
}

impl Checkpointing {
    /// Lock `output` for this run; fails if another live run is writing the same output.
    pub fn acquire(output: &Path, ids: Ids, input_digest: [u8; 32]) -> Result<Self> {
        let lock_path = sibling(output, ".lock");
        let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Mismatch(format!(
                    "another pkn infer is writing {} (it holds {}); wait for it or choose another --output",
                    output.display(),
                    lock_path.display()
                )))
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        Ok(Checkpointing {
            path: sibling(output, ".ckpt"),
            lock_path,
            _lock: lock,
            ids,
            input_digest,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state to resume from, if the checkpoint exists and belongs to this computation.
    pub fn load(&self, circuit: &Circuit, lwe_size: usize) -> Resume {
        if !self.path.exists() {
            return Resume::Fresh(None);
        }
        let expected = Expected {
            ids: self.ids,
            input_digest: self.input_digest,
            circuit,
            lwe_size,
        };
        judge(&self.path, container::read(&self.path, Kind::Checkpoint), &expected)
    }

    /// Save `state` atomically (temp file, sync, rename).
    pub fn save(&self, state: &State) -> Result<()> {
        let payload = Checkpoint {
            input_digest: self.input_digest,
            state,
        };
        container::write(&self.path, Kind::Checkpoint, self.ids, &payload, false)
    }

    /// The run finished and its output is written: remove the checkpoint and the lock file.
    pub fn finish(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&self.path, e)),
            _ => {}
        }
        // Best effort: another run may already have re-created and locked it.
        let _ = std::fs::remove_file(&self.lock_path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tfhe::core_crypto::prelude::{CiphertextModulus, LweCiphertextList, LweSize};

    use super::*;
    use crate::eval::fhe::State;

    fn shipped_circuit() -> Circuit {
        let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
        let model = crate::model::load_model(&weights.join("tiny-pkn.safetensors")).unwrap();
        let images = crate::io::idx::read_images(&weights.join("calibration-images.idx")).unwrap();
        crate::compile::compile(&model, &images[..2], &Default::default()).unwrap()
    }

    /// The bytes of a checkpoint file for `ids()` and a zero input digest, at layer `next_layer`
    /// with tensors `live` (index, values), each ciphertext of `lwe_size`.
    fn checkpoint_bytes(circuit: &Circuit, next_layer: usize, live: &[(usize, usize)], lwe_size: usize) -> Vec<u8> {
        let mut slots: Vec<_> = (0..=circuit.layers.len()).map(|_| None).collect();
        for &(t, values) in live {
            slots[t] = Some(LweCiphertextList::from_container(
                vec![0u64; values * lwe_size],
                LweSize(lwe_size),
                CiphertextModulus::new_native(),
            ));
        }
        let payload = Checkpoint {
            input_digest: [0; 32],
            state: State { next_layer, slots },
        };
        container::frame(Kind::Checkpoint, ids(), &bincode::serialize(&payload).unwrap())
    }

    #[test]
    fn a_checkpoint_is_resumed_only_if_it_fits_the_circuit_at_its_layer() {
        let circuit = shipped_circuit();
        let expected = Expected {
            ids: ids(),
            input_digest: [0; 32],
            circuit: &circuit,
            lwe_size: 3,
        };
        let path = Path::new("out.ct.ckpt");
        let end = circuit.layers.len();
        let outputs = circuit.tensor_shape(end).unwrap().len();
        let judged = |bytes: &[u8]| match resume_from_bytes(path, bytes, &expected) {
            Resume::From(state) => Ok(state.next_layer),
            Resume::Fresh(reason) => Err(reason.unwrap()),
        };
        assert_eq!(judged(&checkpoint_bytes(&circuit, end, &[(end, outputs)], 3)), Ok(end));
        for bad in [
            checkpoint_bytes(&circuit, end, &[(end, outputs + 1)], 3),
            checkpoint_bytes(&circuit, end, &[(end, outputs)], 4),
            checkpoint_bytes(&circuit, end, &[(0, circuit.input.shape.len()), (end, outputs)], 3),
            checkpoint_bytes(&circuit, end, &[], 3),
            checkpoint_bytes(&circuit, end + 1, &[(end, outputs)], 3),
        ] {
            assert!(judged(&bad).unwrap_err().contains("does not match"));
        }
        // A ciphertext size of 0 (its count would divide by it) is refused, not a panic.
        let mut zero_size = checkpoint_bytes(&circuit, end, &[(end, 0)], 3);
        let lwe_size_at = zero_size.len()
            - 8
            - bincode::serialize(&CiphertextModulus::<u64>::new_native())
                .unwrap()
                .len();
        zero_size[lwe_size_at..lwe_size_at + 8].fill(0);
        let body = zero_size[79..].to_vec();
        let reframed = container::frame(Kind::Checkpoint, ids(), &body);
        assert!(judged(&reframed).unwrap_err().contains("does not match"));
    }

    fn ids() -> Ids {
        Ids {
            key: [3; 16],
            model: [4; 16],
        }
    }

    #[test]
    fn a_second_run_on_the_same_output_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("output.ct");
        let first = Checkpointing::acquire(&out, ids(), [0; 32]).unwrap();
        let err = Checkpointing::acquire(&out, ids(), [0; 32]).err().unwrap().to_string();
        assert!(err.contains("another pkn infer is writing"), "{err}");
        assert!(Checkpointing::acquire(&dir.path().join("other.ct"), ids(), [0; 32]).is_ok());
        first.finish().unwrap();
        assert!(Checkpointing::acquire(&out, ids(), [0; 32]).is_ok());
    }
}
