//! The pkn file container (docs/file-formats.md): a fixed header, then a bincode payload.
//!
//! Header: magic `PKNF`, kind (u8), format version (u16 LE), key id (16 bytes), model id
//! (16 bytes; zero where no model applies), payload length (u64 LE), SHA-256 of the payload.
//! Files are written to a temporary file in the same directory and renamed into place, so an
//! existing file is never replaced by a partial one.

use std::io::{Read, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"PKNF";
/// Version of the container and of every payload it carries.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 4 + 1 + 2 + 16 + 16 + 8 + 32;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    ClientKey = 1,
    ServerKey = 2,
    InputCiphertext = 3,
    OutputCiphertext = 4,
    Checkpoint = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [
            Kind::ClientKey,
            Kind::ServerKey,
            Kind::InputCiphertext,
            Kind::OutputCiphertext,
            Kind::Checkpoint,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }

    /// Largest payload of this kind read, refused before the file is read into memory: well
    /// above the largest legitimate one (server key: about 180 MB with the 2^8 x 5 bootstrap
    /// key; checkpoint: 16 KB per value of the widest layer).
    pub fn max_payload(self) -> u64 {
        match self {
            Kind::ClientKey => 1 << 20,
            Kind::ServerKey => 1 << 30,
            Kind::InputCiphertext | Kind::OutputCiphertext => 64 << 20,
            Kind::Checkpoint => 4 << 30,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::ClientKey => "a client (secret) key",
            Kind::ServerKey => "a server (evaluation) key",
            Kind::InputCiphertext => "an encrypted input",
            Kind::OutputCiphertext => "an encrypted result",
            Kind::Checkpoint => "an inference checkpoint",
        }
    }
}

/// Identifiers carried in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
    pub key: [u8; 16],
    pub model: [u8; 16],
}

pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialise `payload` and write it atomically to `path`. `private` files get mode 0600.
pub fn write<T: Serialize>(path: &Path, kind: Kind, ids: Ids, payload: &T, private: bool) -> Result<()> {
    let mut body = bincode::serialize(payload).map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    let mut bytes = frame(kind, ids, &body);
    let written = write_atomic(path, &bytes, private);
    if private {
        body.zeroize();
        bytes.zeroize();
    }
    written
}

/// The file bytes for an already serialised payload: header, checksum, then `body`.
pub fn frame(kind: Kind, ids: Ids, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(kind as u8);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&ids.key);
    bytes.extend_from_slice(&ids.model);
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(body));
    bytes.extend_from_slice(body);
    bytes
}

/// Write `bytes` to a temporary sibling of `path`, sync it, then rename it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::format(path, "not a file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Read a file of `kind`, check its header and checksum, and deserialise the payload.
pub fn read<T: DeserializeOwned>(path: &Path, kind: Kind) -> Result<(Ids, T)> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > HEADER_LEN as u64 + kind.max_payload() {
        // Another kind of pkn file given by mistake is the likelier cause: name it first.
        let mut head = [0u8; 5];
        let read_head = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
        if read_head.is_ok() {
            check_kind(path, &head, kind)?;
        }
        return Err(Error::format(
            path,
            format!("{len} bytes is too large for {}", kind.describe()),
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let decoded = decode(path, &bytes, kind);
    if kind == Kind::ClientKey {
        bytes.zeroize();
    }
    decoded
}

/// [`read`] on bytes already in memory; `path` only names the file in errors.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8], kind: Kind) -> Result<(Ids, T)> {
    use bincode::Options;
    let (ids, body) = parse(path, bytes, kind)?;
    let payload = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(kind.max_payload())
        .deserialize(body)
        .map_err(|e| Error::format(path, format!("corrupted payload: {e}")))?;
    Ok((ids, payload))
}

/// The magic and kind bytes: a pkn file of `kind`, or an error naming what it is.
fn check_kind(path: &Path, head: &[u8], kind: Kind) -> Result<()> {
    if head.len() < 5 || &head[..4] != MAGIC {
        return Err(Error::format(
            path,
            format!("not a pkn file (expected {})", kind.describe()),
        ));
    }
    let found = Kind::from_byte(head[4]);
    if found != Some(kind) {
        let what = found.map_or("an unknown kind of pkn file", Kind::describe);
        return Err(Error::format(
            path,
            format!("this is {what}, expected {}", kind.describe()),
        ));
    }
    Ok(())
}

fn parse<'a>(path: &Path, bytes: &'a [u8], kind: Kind) -> Result<(Ids, &'a [u8])> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::format(
            path,
            format!("not a pkn file (expected {})", kind.describe()),
        ));
    }
    check_kind(path, bytes, kind)?;
    let version = u16::from_le_bytes([bytes[5], bytes[6]]);
    if version > FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!("format version {version} is newer than this pkn reads ({FORMAT_VERSION}); upgrade pkn"),
        ));
    }
    let mut ids = Ids {
        key: [0; 16],
        model: [0; 16],
    };
    ids.key.copy_from_slice(&bytes[7..23]);
    ids.model.copy_from_slice(&bytes[23..39]);
    let len = u64::from_le_bytes(bytes[39..47].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_LEN..];
    if len > kind.max_payload() || body.len() as u64 != len {
        return Err(Error::format(
            path,
            format!(
                "truncated or padded: header says {len} payload bytes, file has {}",
                body.len()
            ),
        ));
    }
    if Sha256::digest(body).as_slice() != &bytes[47..79] {
        return Err(Error::format(path, "checksum mismatch: the file is corrupted"));
    }
    Ok((ids, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Ids {
        Ids {
            key: [1; 16],
            model: [2; 16],
        }
    }

    #[test]
    fn round_trip_and_kind_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, Kind::InputCiphertext, ids(), &vec![1u64, 2, 3], false).unwrap();
        let (got_ids, v): (Ids, Vec<u64>) = read(&p, Kind::InputCiphertext).unwrap();
        assert_eq!((got_ids, v), (ids(), vec![1, 2, 3]));
        let err = read::<Vec<u64>>(&p, Kind::ClientKey).unwrap_err().to_string();
        assert!(
            err.contains("this is an encrypted input, expected a client (secret) key"),
            "{err}"
        );
    }

    #[test]
    fn truncation_corruption_and_newer_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write(&p, Kind::OutputCiphertext, ids(), &vec![7u64; 100], false).unwrap();
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert!(read::<Vec<u64>>(&p, Kind::OutputCiphertext)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(read::<Vec<u64>>(&p, Kind::OutputCiphertext)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let mut newer = good.clone();
        newer[5] = 99;
        std::fs::write(&p, &newer).unwrap();
        assert!(read::<Vec<u64>>(&p, Kind::OutputCiphertext)
            .unwrap_err()
            .to_string()
            .contains("newer"));
        std::fs::write(&p, b"hello").unwrap();
        assert!(read::<Vec<u64>>(&p, Kind::OutputCiphertext)
            .unwrap_err()
            .to_string()
            .contains("not a pkn file"));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write(&p, Kind::ClientKey, ids(), &1u8, true).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
