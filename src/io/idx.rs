//! IDX files (MNIST / Fashion-MNIST), plain or gzipped.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Default location of the Debian package dataset-fashion-mnist.
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Read an IDX file of unsigned bytes: returns the dimensions and the data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(path, &raw)
}

/// [`read_idx`] on bytes already in memory; `path` only names the file in errors.
pub fn parse_idx(path: &Path, raw: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let err = |message: String| Error::Dataset {
        path: path.to_path_buf(),
        message,
    };
    let inflated;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .take(1 << 30)
            .read_to_end(&mut out)
            .map_err(|e| err(format!("bad gzip: {e}")))?;
        inflated = out;
        &inflated[..]
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
    images(path, &dims, &data)
}

/// Split parsed IDX data into images; `path` only names the file in errors.
pub fn images(path: &Path, dims: &[usize], data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let err = |message: String| Error::Dataset {
        path: path.to_path_buf(),
        message,
    };
    if dims.len() != 3 {
        return Err(err(format!("expected images (3 dimensions), found {dims:?}")));
    }
    let Some(pixels) = dims[1].checked_mul(dims[2]).filter(|&p| p > 0) else {
        return Err(err(format!("images of {}x{} pixels cannot be split", dims[1], dims[2])));
    };
    Ok(data.chunks(pixels).map(<[u8]>::to_vec).collect())
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

    #[test]
    fn images_of_no_pixels_are_refused() {
        // 5 images of 0x28 pixels: no data, and a split by 0 pixels would panic.
        let bytes = [0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 28];
        let path = Path::new("x.idx");
        let (dims, data) = parse_idx(path, &bytes).unwrap();
        let err = images(path, &dims, &data).unwrap_err().to_string();
        assert!(err.contains("images of 0x28 pixels cannot be split"), "{err}");
    }
}
