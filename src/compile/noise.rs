//! The noise rule: for a parameter set, the failure probability of every bootstrap of a circuit.
//!
//! Variances are propagated as the largest over the elements of a tensor (an upper bound): a
//! linear output has variance sum(w^2) * var(in); a truncation step on `L` held bits amplifies the
//! ciphertext noise by 2^L before its sign bootstrap, whose input must stay within 1/4 of its
//! centre; each step adds its bootstrap's output noise to the ciphertext; the final table reads W
//! bits, half a slot being 2^-(W + 2) (a split table's halves read W - 1 bits, with the lowest bit
//! removed by the last step and, for one half, moved to the top, times 2^W, with its noise);
//! decrypting an output needs its noise within half a step. A residual deferred
//! into the truncation adds its noise piece by piece, each before the step that first reads it.

use crate::circuit::{Circuit, Layer, Requant, Residual, StepKind, TruncStep};
use crate::params::{log2_gaussian_two_sided_tail, FheParams, LOG2_PFAIL_LIMIT};

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

    /// Whether decrypting the outputs, rather than a layer's bootstrap, is the likeliest failure.
    pub fn output_is_worst(&self) -> bool {
        self.output_log2_pfail >= self.worst().log2_pfail
    }

    pub fn worst_log2_pfail(&self) -> f64 {
        self.layers
            .iter()
            .map(|l| l.log2_pfail)
            .fold(self.output_log2_pfail, f64::max)
    }
}

/// A residual tensor added stage by stage inside a requant's truncation
/// ([`Residual::stage_multipliers`]).
#[derive(Clone, Copy, Debug)]
pub struct DeferredResidual<'a> {
    pub residual: &'a Residual,
    /// Encoding bits of the residual tensor.
    pub bits: u32,
    /// Noise variance of its ciphertexts.
    pub var: f64,
}

impl DeferredResidual<'_> {
    /// The variance each stage adds (before each step, then before the table), worst channel.
    fn stage_variances(&self, acc_bits: u32, steps: &[TruncStep]) -> Vec<f64> {
        self.residual
            .stage_multipliers(acc_bits, steps, self.bits)
            .iter()
            .map(|stage| stage.iter().map(|&m| (m as f64) * (m as f64)).fold(0.0, f64::max) * self.var)
            .collect()
    }
}

/// Worst log2 p-fail among the bootstraps of one requant whose accumulators carry `var`, when
/// its low bits are removed by `steps` (and `residual`, if any, is added along the way).
pub fn requant_log2_pfail(
    r: &Requant,
    var: f64,
    params: &FheParams,
    steps: &[TruncStep],
    residual: Option<&DeferredResidual>,
) -> f64 {
    let added = residual.map_or_else(|| vec![0.0; steps.len() + 1], |d| d.stage_variances(r.acc_bits, steps));
    let mut var = var;
    let mut held = r.acc_bits;
    let mut worst = f64::NEG_INFINITY;
    // The last extended step's sign output: a split table reads it again.
    let mut kept = 0.0;
    for ((st, rule), added) in steps.iter().zip(r.step_rules(steps)).zip(&added) {
        var += added;
        // The sign bootstrap reads ct * 2^(held - digit): the digit and the bit above it, with half
        // a digit slot of margin (a quarter of the torus for a single bit); the digit table reads
        // the same amplification of the ciphertext less that bit, the sign's output included.
        let digit = rule.digit_bits();
        let amplify = 4f64.powi((held - digit) as i32);
        let half_slot = 2f64.powi(-(digit as i32 + 2));
        worst = worst.max(params.log2_pfail(rule.sign_key, var * amplify, half_slot));
        let sign_out = params.pbs_output_variance(rule.sign_key);
        match (rule.kind, rule.digit_key) {
            (StepKind::Digit(_), Some(digit_key)) => {
                // The sign's output only clears a bit of the digit's input; the digit's stays.
                worst = worst.max(params.log2_pfail(digit_key, var * amplify + sign_out, half_slot));
                var += params.pbs_output_variance(digit_key);
            }
            (StepKind::Digit(_), None) => unreachable!("a digit step has a digit table"),
            (StepKind::Extended(_), digit_key) => {
                // The sign's output stays in the accumulator, then the digit table reads it.
                kept = sign_out;
                var += kept;
                if let Some(digit_key) = digit_key {
                    worst = worst.max(params.log2_pfail(digit_key, var * amplify, half_slot));
                    var += params.pbs_output_variance(digit_key);
                }
            }
        }
        held -= st.bits;
    }
    var += added[steps.len()];
    let table = r.table_key;
    if r.split_table() {
        // Both halves read W - 1 bits and the padding bit (half a slot 2^-(W + 1)); the signed half's
        // input holds the kept bit moved to the top, (2^W - 1) times the sign's output in all.
        let half_slot = 2f64.powi(-(r.lut_bits as i32 + 1));
        let signed = var + (4f64.powi(r.lut_bits as i32) - 2f64.powi(r.lut_bits as i32 + 1)) * kept;
        worst
            .max(params.log2_pfail(table, var, half_slot))
            .max(params.log2_pfail(table, signed, half_slot))
    } else {
        worst.max(params.log2_pfail(table, var, 2f64.powi(-(r.lut_bits as i32 + 2))))
    }
}

/// Noise of a table layer's outputs: one bootstrap's on the table's key, or the sum of a split
/// table's two.
pub fn table_output_variance(r: &Requant, params: &FheParams) -> f64 {
    let one = params.pbs_output_variance(r.table_key);
    if r.split_table() {
        2.0 * one
    } else {
        one
    }
}

/// Ways to split `bits` bits into steps: single bits, and digits of 2 to 5 bits (5: an extended
/// step) with the remainder first or last.
fn digit_sequences(bits: u32) -> Vec<Vec<u32>> {
    let mut out = vec![vec![1; bits as usize]];
    for d in 2..=5u32 {
        let (full, rest) = ((bits / d) as usize, bits % d);
        let mut last = vec![d; full];
        let mut first = vec![d; full];
        if rest > 0 {
            last.push(rest);
            first.insert(0, rest);
        }
        out.push(last);
        out.push(first);
    }
    out.retain(|s| !s.is_empty() || bits == 0);
    out.dedup();
    out
}

/// The cheapest truncation plan of one requant meeting the limit: digit sizes, the fewest leading
/// steps on the precise key, and, where the set has a narrow key, every step of at most 4 bits on
/// it or none. None if no plan does.
pub fn plan_steps(
    r: &Requant,
    var: f64,
    params: &FheParams,
    residual: Option<&DeferredResidual>,
) -> Option<Vec<TruncStep>> {
    let narrow_options: &[bool] = if params.has_narrow_key() {
        &[false, true]
    } else {
        &[false]
    };
    let mut best: Option<(f64, Vec<TruncStep>)> = None;
    for digits in digit_sequences(r.truncated_bits()) {
        for &narrow in narrow_options {
            for precise in 0..=digits.len() {
                let steps: Vec<TruncStep> = digits
                    .iter()
                    .enumerate()
                    .map(|(i, &bits)| TruncStep {
                        bits,
                        precise: i < precise,
                        narrow: narrow && bits <= 4,
                    })
                    .collect();
                if requant_log2_pfail(r, var, params, &steps, residual) <= LOG2_PFAIL_LIMIT {
                    let cost = r.steps_cost(&steps, params);
                    if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                        best = Some((cost, steps));
                    }
                    break;
                }
            }
        }
    }
    best.map(|(_, steps)| steps)
}

/// The largest sum of squared weights over the outputs of each linear layer (0 for a table
/// layer): what the noise walk needs of the weights, computed once per circuit rather than once
/// per parameter set tried.
pub struct LinearNorms(Vec<f64>);

impl LinearNorms {
    pub fn of(circuit: &Circuit) -> LinearNorms {
        LinearNorms(
            circuit
                .layers
                .iter()
                .map(|layer| match layer {
                    Layer::Linear(l) => (0..l.out_shape.len())
                        .map(|out| {
                            let mut sum_sq = 0f64;
                            l.for_each_term(out, |idx, w| {
                                if idx.is_some() {
                                    sum_sq += (w as f64) * (w as f64);
                                }
                            });
                            sum_sq
                        })
                        .fold(0.0, f64::max),
                    Layer::Requant(_) => 0.0,
                })
                .collect(),
        )
    }
}

/// Visit every requant with the variance of its accumulators and its deferred residual; returns
/// the output variance. Variances are per tensor, each the worst over its elements; a term read
/// from a tensor with more encoding bits than the layer's output is multiplied by 2^(difference),
/// its noise too.
fn walk(
    circuit: &Circuit,
    norms: &LinearNorms,
    params: &FheParams,
    mut visit: impl FnMut(usize, &Requant, f64, Option<&DeferredResidual>),
) -> f64 {
    let enc = circuit.tensor_encodings();
    let deferred_residuals = circuit.deferred_residuals();
    let mut var = vec![0f64; circuit.layers.len() + 1];
    var[0] = params.fresh_variance();
    let mut deferred = None;
    for (i, layer) in circuit.layers.iter().enumerate() {
        var[i + 1] = match layer {
            Layer::Linear(l) => {
                let rescale = |t: usize| 4f64.powi((enc[t] - enc[i + 1]) as i32) * var[t];
                deferred = deferred_residuals[i].map(|residual| DeferredResidual {
                    residual,
                    bits: enc[residual.from],
                    var: var[residual.from],
                });
                let residual = match (&l.residual, deferred) {
                    (Some(r), None) => {
                        let g = r.gains.iter().map(|g| (g * g) as f64).fold(0.0, f64::max);
                        g * rescale(r.from)
                    }
                    _ => 0.0,
                };
                norms.0[i] * rescale(l.input) + residual
            }
            Layer::Requant(r) => {
                visit(i, r, var[i], deferred.take().as_ref());
                table_output_variance(r, params)
            }
        };
    }
    var[circuit.layers.len()]
}

pub fn analyse(circuit: &Circuit, norms: &LinearNorms, params: &FheParams) -> NoiseReport {
    let mut layers = Vec::new();
    let out_var = walk(circuit, norms, params, |_, r, var, residual| {
        layers.push(LayerNoise {
            name: r.name.clone(),
            acc_bits: r.acc_bits,
            lut_bits: r.lut_bits,
            log2_pfail: requant_log2_pfail(r, var, params, &r.steps, residual),
        })
    });
    let half_step = 2f64.powi(-(circuit.output.bits as i32 + 2));
    NoiseReport {
        layers,
        output_log2_pfail: log2_gaussian_two_sided_tail(half_step / out_var.sqrt()),
    }
}

/// For each requant (by layer index), its cheapest truncation plan meeting the limit; a requant
/// no plan serves gets single-bit steps all on the precise key (and so fails the analysis).
pub fn plan_truncation(circuit: &Circuit, norms: &LinearNorms, params: &FheParams) -> Vec<(usize, Vec<TruncStep>)> {
    let mut plan = Vec::new();
    walk(circuit, norms, params, |i, r, var, residual| {
        let steps = plan_steps(r, var, params, residual).unwrap_or_else(|| {
            (0..r.truncated_bits())
                .map(|_| TruncStep {
                    bits: 1,
                    precise: true,
                    narrow: false,
                })
                .collect()
        });
        plan.push((i, steps));
    });
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_sequences_cover_the_shift() {
        for shift in 0..12 {
            for seq in digit_sequences(shift) {
                assert_eq!(seq.iter().sum::<u32>(), shift, "{seq:?}");
                assert!(seq.iter().all(|&d| (1..=5).contains(&d)));
            }
        }
        assert!(digit_sequences(6).contains(&vec![4, 2]));
        assert!(digit_sequences(9).contains(&vec![4, 5]));
    }
}
