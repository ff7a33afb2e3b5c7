//! The leveled layers on ciphertexts: integer weighted sums, with no bootstrap.

use std::ops::Range;

use rayon::prelude::*;
use tfhe::core_crypto::prelude::*;

use super::Ciphertexts;
use crate::circuit::Linear;
use crate::encoding::encode;
use crate::params::native_modulus;

/// A leveled layer on ciphertexts: wrapping integer sums, offsets and padding as plaintexts.
/// `input` and the residual tensor are encoded with `input_bits` and `residual_bits`; the output
/// with `output_bits` (at most either): each term is multiplied by 2^(its bits - output_bits).
/// Computes the outputs `outputs` only (a process's slice; all of them: `0..len`).
pub fn linear(
    layer: &Linear,
    input: &Ciphertexts,
    input_bits: u32,
    residual: Option<(&Ciphertexts, u32)>,
    output_bits: u32,
    outputs: Range<usize>,
) -> Ciphertexts {
    let size = input.lwe_size().0;
    let src = input.as_ref();
    let rescale = |bits: u32| 1u64 << (bits - output_bits);
    let (in_scale, res) = (
        rescale(input_bits),
        residual.map(|(r, bits)| (r.as_ref(), rescale(bits))),
    );
    let mut out = vec![0u64; outputs.len() * size];
    out.par_chunks_mut(size).zip(outputs).for_each(|(dst, o)| {
        let c = layer.channel_of(o);
        let mut add = |ct: &[u64], w: u64| {
            for (d, s) in dst.iter_mut().zip(ct) {
                *d = d.wrapping_add(s.wrapping_mul(w));
            }
        };
        let mut constant = layer.offsets[c];
        layer.for_each_term(o, |idx, w| match idx {
            Some(i) => add(&src[i * size..(i + 1) * size], (w as u64).wrapping_mul(in_scale)),
            None => constant += w,
        });
        if let (Some(r), Some((values, scale))) = (&layer.residual, res) {
            add(
                &values[o * size..(o + 1) * size],
                (r.gains[c] as u64).wrapping_mul(scale),
            );
        }
        dst[size - 1] = dst[size - 1].wrapping_add(encode(constant, output_bits));
    });
    LweCiphertextList::from_container(out, LweSize(size), native_modulus())
}
