//! PNG input: 8-bit grayscale of the model's size. Other colour types are converted to gray
//! (luma = (299 R + 587 G + 114 B) / 1000, alpha ignored, 16-bit reduced to 8); other sizes are refused.

use std::path::Path;

use crate::error::{Error, Result};

/// Refuse images whose header claims more than this many pixels, before decoding anything.
const MAX_PIXELS: u64 = 1 << 24;

pub fn load_gray_png(path: &Path, width: usize, height: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_gray_png(path, &bytes, width, height)
}

/// [`load_gray_png`] on bytes already in memory; `path` only names the image in errors.
pub fn decode_gray_png(path: &Path, bytes: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let err = |message: String| Error::Image {
        path: path.to_path_buf(),
        message,
    };
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| err(format!("not a valid PNG: {e}")))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    if (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(err(format!("{w}x{h} is too large")));
    }
    if (w, h) != (width, height) {
        return Err(err(format!(
            "is {w}x{h}, the model takes {width}x{height} (resize it first)"
        )));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let channels = frame.color_type.samples();
    let data = &buf[..frame.buffer_size()];
    let pixels = data
        .chunks(frame.line_size)
        .take(h)
        .flat_map(|line| line.chunks(channels).take(w))
        .map(|px| match px.len() {
            1 | 2 => px[0],
            _ => ((299 * px[0] as u32 + 587 * px[1] as u32 + 114 * px[2] as u32 + 500) / 1000) as u8,
        })
        .collect::<Vec<u8>>();
    Ok(pixels)
}

/// Write an 8-bit grayscale PNG (for samples and tests).
pub fn save_gray_png(path: &Path, pixels: &[u8], width: usize, height: usize) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| Error::format(path, e.to_string()))?;
        w.write_image_data(pixels)
            .map_err(|e| Error::format(path, e.to_string()))?;
    }
    super::container::write_atomic(path, &bytes, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let px: Vec<u8> = (0..12).map(|i| i * 20).collect();
        save_gray_png(&p, &px, 4, 3).unwrap();
        assert_eq!(load_gray_png(&p, 4, 3).unwrap(), px);
        assert!(load_gray_png(&p, 28, 28).unwrap_err().to_string().contains("is 4x3"));
    }

    #[test]
    fn rgb_is_converted_to_gray() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rgb.png");
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, 2, 1);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()
                .unwrap()
                .write_image_data(&[255, 255, 255, 255, 0, 0])
                .unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(load_gray_png(&p, 2, 1).unwrap(), vec![255, 76]);
    }

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
        out
    }

    /// An 8-bit grayscale PNG claiming `w` x `h` pixels whose IDAT inflates to `raw`.
    fn crafted_png(w: u32, h: u32, raw: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(raw).unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &z.finish().unwrap()));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn huge_dimensions_are_refused_from_the_header() {
        let png = crafted_png(100_000, 100_000, &[0; 16]);
        let err = decode_gray_png(Path::new("bomb.png"), &png, 28, 28)
            .unwrap_err()
            .to_string();
        assert!(err.contains("100000x100000 is too large"), "{err}");
    }

    #[test]
    fn an_idat_inflating_far_beyond_the_image_is_cut_at_the_image() {
        // 28x28 claimed, 64 MiB of zeros behind it (a 64 KB file): the output buffer is sized
        // from the checked header, so the surplus is never held in memory.
        let png = crafted_png(28, 28, &vec![0; 64 << 20]);
        assert!(png.len() < 1 << 17);
        let pixels = decode_gray_png(Path::new("bomb.png"), &png, 28, 28).unwrap();
        assert_eq!(pixels, vec![0; 28 * 28]);
    }

    #[test]
    fn non_png_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, b"GIF89a....").unwrap();
        assert!(load_gray_png(&p, 28, 28)
            .unwrap_err()
            .to_string()
            .contains("not a valid PNG"));
    }
}
