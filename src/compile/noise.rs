//! The noise rule: for a parameter set, the failure probability of every bootstrap of a circuit.
//!
//! Variances are propagated as the largest over the elements of a tensor (an upper bound): a
//! linear output has variance sum(w^2) * var(in); a truncation step on `L` held bits amplifies the
//! ciphertext noise by 2^L before its sign bootstrap, whose input must stay within 1/4 of its
//! centre; each step adds its bootstrap's output noise to the ciphertext; the final table reads W
//! bits, half a slot being 2^-(W + 2); decrypting an output needs its noise within half a step.

use crate::circuit::{Circuit, Layer, Requant};
use crate::params::{log2_gaussian_two_sided_tail, Bootstrap, FheParams, LOG2_PFAIL_LIMIT};

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

/// Worst log2 p-fail among the bootstraps of one requant whose accumulators carry `var`,
/// when its first `precise_steps` truncation steps use the precise key.
pub fn requant_log2_pfail(r: &Requant, var: f64, params: &FheParams, precise_steps: u32) -> f64 {
    let mut var = var;
    let mut worst = f64::NEG_INFINITY;
    for step in 0..r.shift() {
        let held = r.acc_bits - step;
        worst = worst.max(params.log2_pfail(var * 4f64.powi(held as i32), 0.25));
        let key = if step < precise_steps {
            Bootstrap::Precise
        } else {
            Bootstrap::Cheap
        };
        var += params.pbs_output_variance(key);
    }
    worst.max(params.log2_pfail(var, 2f64.powi(-(r.lut_bits as i32 + 2))))
}

/// Visit every requant with the variance of its accumulators; returns the output variance.
fn walk(circuit: &Circuit, params: &FheParams, mut visit: impl FnMut(usize, &Requant, f64)) -> f64 {
    let mut var = params.fresh_variance();
    for (i, layer) in circuit.layers.iter().enumerate() {
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
                visit(i, r, var);
                var = params.pbs_output_variance(Bootstrap::Precise);
            }
        }
    }
    var
}

pub fn analyse(circuit: &Circuit, params: &FheParams) -> NoiseReport {
    let mut layers = Vec::new();
    let out_var = walk(circuit, params, |_, r, var| {
        layers.push(LayerNoise {
            name: r.name.clone(),
            acc_bits: r.acc_bits,
            lut_bits: r.lut_bits,
            log2_pfail: requant_log2_pfail(r, var, params, r.precise_steps),
        })
    });
    let half_step = 2f64.powi(-(circuit.output.bits as i32 + 2));
    NoiseReport {
        layers,
        output_log2_pfail: log2_gaussian_two_sided_tail(half_step / out_var.sqrt()),
    }
}

/// For each requant, the fewest precise truncation steps that keep every bootstrap under the
/// limit (all steps precise if nothing does).
pub fn plan_precise_steps(circuit: &Circuit, params: &FheParams) -> Vec<(usize, u32)> {
    let mut plan = Vec::new();
    walk(circuit, params, |i, r, var| {
        let k = (0..=r.shift())
            .find(|&k| requant_log2_pfail(r, var, params, k) <= LOG2_PFAIL_LIMIT)
            .unwrap_or(r.shift());
        plan.push((i, k));
    });
    plan
}
