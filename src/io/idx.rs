//! IDX files (MNIST / Fashion-MNIST), plain or gzipped.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Default location of the Debian package dataset-fashion-mnist.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Read an IDX file of unsigned bytes: returns the dimensions and the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let err = |message: String| Error::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(1 << 30)
            .read_to_end(&mut out)
            .map_err(|e| err(format!("bad gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(err("not an IDX file of unsigned bytes".into()));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(err("truncated IDX header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(bytes.len() - header) {
        return Err(err(format!(
            "dimensions {dims:?} do not match {} data bytes",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Images of an IDX image file, each flattened.
pub fn read_images(path: &Path) -> Result<Vec<Vec<u8>>> {
    let (dims, data) = read_idx(path)?;
    if dims.len() != 3 {
        return Err(Error::Dataset {
            path: path.to_path_buf(),
            message: format!("expected images (3 dimensions), found {dims:?}"),
        });
    }
    Ok(data.chunks(dims[1] * dims[2]).map(<[u8]>::to_vec).collect())
}

/// Labels of an IDX label file.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read_idx(path)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_idx() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.idx");
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        bytes.extend([1, 2, 3, 4]);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_images(&p).unwrap(), vec![vec![1, 2], vec![3, 4]]);
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_images(&p).is_err());
    }
}
