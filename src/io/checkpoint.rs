//! Checkpoints of a running encrypted inference, so that a killed run resumes where it stopped.
//!
//! A run writing `OUT` holds an exclusive lock on `OUT.lock` (released by the OS when the process
//! dies, so a kill -9 leaves no stale lock) and saves its state after every requant layer to
//! `OUT.ckpt`, atomically. The checkpoint records the key and model ids and the SHA-256 of the
//! encrypted input, so it is only ever resumed by the same computation, and a resumed run's result
//! decrypts to exactly an uninterrupted run's.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::container::{self, Ids, Kind};
use crate::error::{Error, Result};

/// Payload of a checkpoint file: the run's state `S` (the evaluator's), read as an owned value and
/// written from a borrowed one (the same bytes), so saving never copies the live ciphertexts.
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
pub enum Resume<S> {
    /// A valid checkpoint of this very computation.
    From(S),
    /// No checkpoint, or one that cannot be used (the reason says why).
    Fresh(Option<String>),
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// SHA-256 of a file's bytes: identifies the encrypted input a checkpoint belongs to.
pub fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(bytes).into())
}

/// Whose checkpoint can be resumed: the key and model ids and the encrypted input's digest.
#[derive(Clone, Copy)]
pub struct Expected {
    pub ids: Ids,
    pub input_digest: [u8; 32],
}

/// [`Checkpointing::load`] on the bytes of a checkpoint file; `path` only names it in messages.
pub fn resume_from_bytes<S: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    expected: &Expected,
    fits: impl FnOnce(&S) -> std::result::Result<(), String>,
) -> Resume<S> {
    accept_checkpoint(path, container::decode(path, bytes, Kind::Checkpoint), expected, fits)
}

/// Whether a decoded checkpoint belongs to this computation and, by `fits` (the evaluator's
/// check, which compares sizes before anything is computed from them), fits its circuit.
fn accept_checkpoint<S>(
    path: &Path,
    read: Result<(Ids, Checkpoint<S>)>,
    expected: &Expected,
    fits: impl FnOnce(&S) -> std::result::Result<(), String>,
) -> Resume<S> {
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
    match fits(&saved.state) {
        Ok(()) => Resume::From(saved.state),
        Err(why) => Resume::Fresh(Some(format!("{} {why}", path.display()))),
    }
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

    /// The state to resume from, if the checkpoint exists, belongs to this computation and
    /// `fits` its circuit.
    pub fn load<S: DeserializeOwned>(&self, fits: impl FnOnce(&S) -> std::result::Result<(), String>) -> Resume<S> {
        if !self.path.exists() {
            return Resume::Fresh(None);
        }
        let expected = Expected {
            ids: self.ids,
            input_digest: self.input_digest,
        };
        accept_checkpoint(
            &self.path,
            container::read(&self.path, Kind::Checkpoint),
            &expected,
            fits,
        )
    }

    /// Save `state` atomically (temp file, sync, rename).
    pub fn save<S: Serialize>(&self, state: &S) -> Result<()> {
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
    use super::*;

    fn ids() -> Ids {
        Ids {
            key: [3; 16],
            model: [4; 16],
        }
    }

    #[test]
    fn a_checkpoint_is_resumed_only_by_its_own_computation_and_if_it_fits() {
        let path = Path::new("out.ct.ckpt");
        let payload = Checkpoint {
            input_digest: [7; 32],
            state: 5u32,
        };
        let bytes = container::frame(Kind::Checkpoint, ids(), &bincode::serialize(&payload).unwrap());
        let expected = Expected {
            ids: ids(),
            input_digest: [7; 32],
        };
        let resumed = |expected: &Expected, fits: bool| match resume_from_bytes(path, &bytes, expected, |&s: &u32| {
            assert_eq!(s, 5);
            if fits {
                Ok(())
            } else {
                Err("does not match".into())
            }
        }) {
            Resume::From(state) => Ok(state),
            Resume::Fresh(reason) => Err(reason.unwrap()),
        };
        assert_eq!(resumed(&expected, true), Ok(5));
        assert_eq!(resumed(&expected, false), Err("out.ct.ckpt does not match".into()));
        let other_input = Expected {
            input_digest: [8; 32],
            ..expected
        };
        assert!(resumed(&other_input, true)
            .unwrap_err()
            .contains("belongs to another input"));
        let mut corrupt = bytes.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            resume_from_bytes(path, &corrupt, &expected, |_: &u32| Ok(())),
            Resume::Fresh(Some(reason)) if reason.contains("unusable checkpoint")
        ));
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
