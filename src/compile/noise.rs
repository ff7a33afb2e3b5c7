//! The noise rule: for a parameter set, the failure probability of every bootstrap of a circuit.
//!
//! Variances are propagated as the largest over the elements of a tensor (an upper bound): a
//! linear output has variance sum(w^2) * var(in); a truncation step on `L` held bits amplifies the
//! ciphertext noise by 2^L before its sign bootstrap, whose input must stay within 1/4 of its
//! centre; the final table reads W bits, half a slot being 2^-(W + 2); decryption of the outputs
//! needs the noise within half a step of their encoding.

use crate::circuit::{Circuit, Layer};
use crate::params::{log2_gaussian_two_sided_tail, FheParams};

/// The worst bootstrap of one table layer.
#[derive(Clone, Debug)]
pub struct LayerNoise {
    pub name: String,
    pub acc_bits: u32,
    pub lut_bits: u32,
    /// log2 of the worst failure probability among its bootstraps.
    pub log2_pfail: f64,
}

#[derive(Clone, Debug)]
pub struct NoiseReport {
    pub layers: Vec<LayerNoise>,
    /// log2 of the probability that decrypting an output rounds wrongly.
    pub output_log2_pfail: f64,
}

impl NoiseReport {
    pub fn worst(&self) -> LayerNoise {
        self.layers
            .iter()
            .cloned()
            .max_by(|a, b| a.log2_pfail.total_cmp(&b.log2_pfail))
            .unwrap_or(LayerNoise {
                name: "output".into(),
                acc_bits: 0,
                lut_bits: 0,
                log2_pfail: self.output_log2_pfail,
            })
    }

    pub fn worst_log2_pfail(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| l.log2_pfail)
            .fold(self.output_log2_pfail, f64::max)
    }
}

pub fn analyse(circuit: &Circuit, params: &FheParams) -> NoiseReport {
    let pbs_var = params.pbs_output_variance();
    let mut var = params.fresh_variance();
    let mut layers = Vec::new();
    for layer in &circuit.layers {
        match layer {
            Layer::Linear(l) => {
                let mut worst = 0f64;
                for out in 0..l.out_shape.len() {
                    let mut sum_sq = 0f64;
                    l.for_each_term(out, |idx, w| {
                        if idx.is_some() {
                            sum_sq += (w as f64) * (w as f64);
                        }
                    });
                    worst = worst.max(sum_sq);
                }
                var *= worst;
            }
            Layer::Requant(r) => {
                let mut log2_pfail = f64::NEG_INFINITY;
                for step in 0..r.shift() {
                    let held = r.acc_bits - step;
                    let v = (var + step as f64 * pbs_var) * 4f64.powi(held as i32);
                    log2_pfail = log2_pfail.max(params.log2_pfail(v, 0.25));
                }
                let v = var + r.shift() as f64 * pbs_var;
                log2_pfail =
                    log2_pfail.max(params.log2_pfail(v, 2f64.powi(-(r.lut_bits as i32 + 2))));
                layers.push(LayerNoise {
                    name: r.name.clone(),
                    acc_bits: r.acc_bits,
                    lut_bits: r.lut_bits,
                    log2_pfail,
                });
                var = pbs_var;
            }
        }
    }
    let half_step = 2f64.powi(-(circuit.output.bits as i32 + 2));
    NoiseReport {
        layers,
        output_log2_pfail: log2_gaussian_two_sided_tail(half_step / var.sqrt()),
    }
}
