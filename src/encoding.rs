//! How integers live on the torus: the encoding `Delta = 2^(63 - B)` that the client, the server
//! and the clear evaluator share, and the client's pixel quantization.

/// A quarter of the torus (2^64): the phase offset that centres a single bit in its half.
pub const TORUS_QUARTER: u64 = 1 << 62;

/// Widest encoding a decoded file may claim; decoding shifts by `63 - bits` and wraps by
/// `2^(bits + 1)`, and the circuits use a dozen bits at most.
pub const MAX_ENCODING_BITS: u32 = 32;

/// Encoding `Delta = 2^(63 - bits)`: `bits` of message plus one padding bit.
pub fn delta(bits: u32) -> u64 {
    1u64 << (63 - bits)
}

/// Encode a signed integer with `Delta = 2^(63 - bits)` (wrapping, as the ciphertext does).
pub fn encode(value: i64, bits: u32) -> u64 {
    (value as u64).wrapping_mul(delta(bits))
}

/// Round a phase to the nearest multiple of Delta and return it as a signed integer in
/// [-2^bits, 2^bits).
pub fn decode(phase: u64, bits: u32) -> i64 {
    let d = delta(bits);
    let rounded = phase.wrapping_add(d / 2) / d;
    wrap_signed(rounded as i64, bits)
}

/// The value a ciphertext with encoding `Delta = 2^(63 - bits)` holds: `v mod 2^(bits + 1)`,
/// read as signed.
pub fn wrap_signed(v: i64, bits: u32) -> i64 {
    let m = 1i64 << (bits + 1);
    let r = v.rem_euclid(m);
    if r >= m / 2 {
        r - m
    } else {
        r
    }
}

/// Pixels in [0, 255] to the circuit's input integers: round(p / 255 * (2^bits - 1)).
pub fn quantize_pixels(pixels: &[u8], bits: u32) -> Vec<i64> {
    let levels = (1i64 << bits) - 1;
    pixels.iter().map(|&p| (p as i64 * levels * 2 + 255) / 510).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_signed_matches_two_complement() {
        assert_eq!(wrap_signed(5, 3), 5);
        assert_eq!(wrap_signed(8, 3), -8);
        assert_eq!(wrap_signed(-9, 3), 7);
    }

    #[test]
    fn pixels_round_to_the_nearest_level() {
        assert_eq!(quantize_pixels(&[0, 8, 9, 128, 255], 4), vec![0, 0, 1, 8, 15]);
    }

    #[test]
    fn encode_decode_round_trip_with_wrap() {
        for bits in [3u32, 8, 12] {
            for v in [-(1i64 << bits), -1, 0, 1, (1 << bits) - 1] {
                assert_eq!(decode(encode(v, bits), bits), v, "bits {bits} v {v}");
                let noisy = encode(v, bits).wrapping_add(delta(bits) / 2 - 1);
                assert_eq!(decode(noisy, bits), v);
            }
        }
    }
}
