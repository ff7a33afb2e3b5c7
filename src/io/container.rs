//! The pkn file container (docs/file-formats.md): a fixed header, then a bincode payload.
//!
//! Header: magic `PKNF`, kind (u8), format version (u16 LE), key id (16 bytes), model id
//! (16 bytes; zero where no model applies), payload length (u64 LE), SHA-256 of the payload.
//! Files are written to a temporary file in the same directory and renamed into place, so an
//! existing file is never replaced by a partial one. Payloads stream through the checksum both ways
//! (a checkpoint of a wide layer is gigabytes: it is never held a second time as bytes), except a
//! client key's, whose few bytes are held and then zeroized.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"PKNF";
/// Version of the container and of every payload it carries. 2: a key's parameters name a medium
/// bootstrap key, and a server key holds its bootstrap keys as a list.
pub const FORMAT_VERSION: u16 = 2;

/// Where each field of the header starts (docs/file-formats.md): magic, kind byte, format version
/// (u16 LE), key id, model id, payload length (u64 LE), SHA-256 of the payload.
const KIND_AT: usize = MAGIC.len();
const VERSION_AT: usize = KIND_AT + 1;
const KEY_ID_AT: usize = VERSION_AT + 2;
const MODEL_ID_AT: usize = KEY_ID_AT + 16;
const LENGTH_AT: usize = MODEL_ID_AT + 16;
const DIGEST_AT: usize = LENGTH_AT + 8;
/// Bytes before the payload.
pub const HEADER_LEN: usize = DIGEST_AT + 32;

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
    /// above the largest legitimate one (server key: 120 MB for tiny-pkn and cnn-pkn, 241 MB
    /// for resnet18-pkn's 2^6 x 7 and 2^10 x 4 bootstrap keys, about 400 MB for the finest, 2^5 x 8
    /// with a 2^10 x 4 medium key;
    /// checkpoint: 16 KB per value of the widest layer).
    pub fn max_payload(self) -> u64 {
        match self {
            Kind::ClientKey => 1 << 20,
            Kind::ServerKey => 1 << 30,
            Kind::InputCiphertext | Kind::OutputCiphertext => 64 << 20,
            Kind::Checkpoint => 4 << 30,
        }
    }

    /// Oldest format version of this kind this pkn reads: keys written before the format named
    /// the medium key do not decode.
    fn oldest_version(self) -> u16 {
        match self {
            Kind::ClientKey | Kind::ServerKey => 2,
            Kind::InputCiphertext | Kind::OutputCiphertext | Kind::Checkpoint => 1,
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

/// A reader or writer that hashes and counts the bytes passing through it.
struct Digesting<S> {
    inner: S,
    hasher: Sha256,
    bytes: u64,
}

impl<S> Digesting<S> {
    fn new(inner: S) -> Self {
        Digesting {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn seen(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.seen(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen(&buf[..n]);
        Ok(n)
    }
}

/// Serialise `payload` and write it atomically to `path`. `private` files get mode 0600 and are
/// serialised in memory, so that their bytes can be zeroized; the others stream into the file
/// through the checksum, and their header is filled in once the payload is written.
pub fn write<T: Serialize>(path: &Path, kind: Kind, ids: Ids, payload: &T, private: bool) -> Result<()> {
    let cannot = |e: bincode::Error| Error::format(path, format!("cannot serialise: {e}"));
    if private {
        let mut body = bincode::serialize(payload).map_err(cannot)?;
        let mut bytes = frame(kind, ids, &body);
        let written = write_atomic(path, &bytes, private);
        body.zeroize();
        bytes.zeroize();
        return written;
    }
    write_atomic_with(path, false, |file| {
        let io = |e| Error::io(path, e);
        // A placeholder header, rewritten in place before the file is synced and renamed.
        file.write_all(&[0; HEADER_LEN]).map_err(io)?;
        // Buffered above the checksum, as in `decode_from`: bincode writes a word at a time.
        let mut out = BufWriter::new(Digesting::new(&mut *file));
        bincode::serialize_into(&mut out, payload).map_err(|e| match *e {
            bincode::ErrorKind::Io(e) => io(e),
            other => cannot(other.into()),
        })?;
        let body = out.into_inner().map_err(|e| io(e.into_error()))?;
        let head = header(kind, ids, body.bytes, &body.hasher.finalize());
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&head).map_err(io)
    })
}

fn header(kind: Kind, ids: Ids, body_len: u64, digest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.push(kind as u8);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&ids.key);
    bytes.extend_from_slice(&ids.model);
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(digest);
    bytes
}

/// The file bytes for an already serialised payload: header, checksum, then `body`.
pub fn frame(kind: Kind, ids: Ids, body: &[u8]) -> Vec<u8> {
    let mut bytes = header(kind, ids, body.len() as u64, &Sha256::digest(body));
    bytes.extend_from_slice(body);
    bytes
}

/// Write `bytes` to a temporary sibling of `path`, sync it, then rename it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    write_atomic_with(path, private, |file| {
        file.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Let `fill` write a temporary sibling of `path`, sync it, then rename it over `path`; on any
/// error the temporary file is removed and `path` is left as it was.
fn write_atomic_with(path: &Path, private: bool, fill: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::format(path, "not a file name"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let io = |e| Error::io(path, e);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io)?;
        fill(&mut f)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
    if kind == Kind::ClientKey {
        let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let decoded = decode(path, &bytes, kind);
        bytes.zeroize();
        return decoded;
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    decode_from(path, file, len, kind)
}

/// [`read`] on bytes already in memory; `path` only names the file in errors.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8], kind: Kind) -> Result<(Ids, T)> {
    decode_from(path, bytes, bytes.len() as u64, kind)
}

/// Check the header of the `size` bytes `reader` yields, then deserialise the payload as it passes
/// through the checksum. A payload whose checksum fails is refused even when it deserialised.
fn decode_from<T: DeserializeOwned>(path: &Path, mut reader: impl Read, size: u64, kind: Kind) -> Result<(Ids, T)> {
    use bincode::Options;
    let io = |e| Error::io(path, e);
    let mut head = Vec::with_capacity(HEADER_LEN);
    (&mut reader)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let (ids, body_len, digest) = parse_header(path, &head, size.saturating_sub(head.len() as u64), kind)?;
    // Buffered above the checksum: bincode reads a word at a time, the hash sees whole blocks.
    let mut body = BufReader::new(Digesting::new(reader.take(body_len)));
    let payload = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(kind.max_payload())
        .deserialize_from(&mut body);
    std::io::copy(&mut body, &mut std::io::sink()).map_err(io)?;
    let body = body.into_inner();
    if body.bytes != body_len {
        return Err(Error::format(path, "the file changed while it was read"));
    }
    if body.hasher.finalize().as_slice() != digest {
        return Err(Error::format(path, "checksum mismatch: the file is corrupted"));
    }
    let payload = payload.map_err(|e| Error::format(path, format!("corrupted payload: {e}")))?;
    Ok((ids, payload))
}

/// The magic and kind bytes: a pkn file of `kind`, or an error naming what it is.
fn check_kind(path: &Path, head: &[u8], kind: Kind) -> Result<()> {
    if head.len() < VERSION_AT || &head[..KIND_AT] != MAGIC {
        return Err(Error::format(
            path,
            format!("not a pkn file (expected {})", kind.describe()),
        ));
    }
    let found = Kind::from_byte(head[KIND_AT]);
    if found != Some(kind) {
        let what = found.map_or("an unknown kind of pkn file", Kind::describe);
        return Err(Error::format(
            path,
            format!("this is {what}, expected {}", kind.describe()),
        ));
    }
    Ok(())
}

/// The ids, payload length and checksum of a header, checked against `kind`, this pkn's format
/// version and `body_len`, the number of bytes that follow the header.
fn parse_header(path: &Path, head: &[u8], body_len: u64, kind: Kind) -> Result<(Ids, u64, [u8; 32])> {
    if head.len() < HEADER_LEN {
        return Err(Error::format(
            path,
            format!("not a pkn file (expected {})", kind.describe()),
        ));
    }
    check_kind(path, head, kind)?;
    let version = u16::from_le_bytes([head[VERSION_AT], head[VERSION_AT + 1]]);
    if version > FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!("format version {version} is newer than this pkn reads ({FORMAT_VERSION}); upgrade pkn"),
        ));
    }
    if version < kind.oldest_version() {
        return Err(Error::format(
            path,
            format!(
                "format version {version} is older than this pkn reads for {} ({}); run `pkn keygen` again",
                kind.describe(),
                kind.oldest_version()
            ),
        ));
    }
    let mut ids = Ids {
        key: [0; 16],
        model: [0; 16],
    };
    ids.key.copy_from_slice(&head[KEY_ID_AT..MODEL_ID_AT]);
    ids.model.copy_from_slice(&head[MODEL_ID_AT..LENGTH_AT]);
    let len = u64::from_le_bytes(head[LENGTH_AT..DIGEST_AT].try_into().expect("8 bytes"));
    if len > kind.max_payload() || body_len != len {
        return Err(Error::format(
            path,
            format!("truncated or padded: header says {len} payload bytes, file has {body_len}"),
        ));
    }
    Ok((ids, len, head[DIGEST_AT..HEADER_LEN].try_into().expect("32 bytes")))
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
        write(&p, Kind::ServerKey, ids(), &vec![7u64; 100], false).unwrap();
        let mut older = std::fs::read(&p).unwrap();
        older[5] = 1;
        std::fs::write(&p, &older).unwrap();
        let err = read::<Vec<u64>>(&p, Kind::ServerKey).unwrap_err().to_string();
        assert!(
            err.contains("older than this pkn reads") && err.contains("pkn keygen"),
            "{err}"
        );
        std::fs::write(&p, b"hello").unwrap();
        assert!(read::<Vec<u64>>(&p, Kind::OutputCiphertext)
            .unwrap_err()
            .to_string()
            .contains("not a pkn file"));
    }

    #[test]
    fn streamed_files_are_the_framed_bytes_and_corruption_is_a_checksum_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let payload: Vec<u64> = (0..100_000).map(|i| i * 0x9e37_79b9).collect();
        write(&p, Kind::Checkpoint, ids(), &payload, false).unwrap();
        let good = std::fs::read(&p).unwrap();
        let body = bincode::serialize(&payload).unwrap();
        assert_eq!(good, frame(Kind::Checkpoint, ids(), &body));
        let (_, back): (Ids, Vec<u64>) = read(&p, Kind::Checkpoint).unwrap();
        assert_eq!(back, payload);
        // A length prefix made huge stops the decoder early; the whole body is hashed anyway.
        let mut bad = good.clone();
        bad[HEADER_LEN + 7] ^= 0x40;
        std::fs::write(&p, &bad).unwrap();
        let err = read::<Vec<u64>>(&p, Kind::Checkpoint).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
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
