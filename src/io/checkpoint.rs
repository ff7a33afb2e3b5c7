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

/// Payload of a checkpoint file.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    input_digest: [u8; 32],
    state: State,
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

/// Whether a saved state has the tensors the circuit holds before its next layer, of the right sizes.
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
                    && circuit.tensor_shape(t).map(|s| s.len()) == Some(cts.lwe_ciphertext_count().0)
            }
        }
    })
}

/// SHA-256 of a file's bytes: identifies the encrypted input a checkpoint belongs to.
pub fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(bytes).into())
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
        let (ids, saved): (Ids, Checkpoint) = match container::read(&self.path, Kind::Checkpoint) {
            Ok(read) => read,
            Err(e) => return Resume::Fresh(Some(format!("unusable checkpoint ({e})"))),
        };
        if ids != self.ids || saved.input_digest != self.input_digest {
            return Resume::Fresh(Some(format!(
                "{} belongs to another input, key or model",
                self.path.display()
            )));
        }
        let state = saved.state;
        if !fits(circuit, &state, lwe_size) {
            return Resume::Fresh(Some(format!(
                "{} does not match the circuit's layer {}",
                self.path.display(),
                state.next_layer
            )));
        }
        Resume::From(state)
    }

    /// Save `state` atomically (temp file, sync, rename).
    pub fn save(&self, state: &State) -> Result<()> {
        let payload = Checkpoint {
            input_digest: self.input_digest,
            state: state.clone(),
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
    use super::*;

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
