//! Parameter choice: the cheapest TFHE parameter set under which every bootstrap meets
//! p-fail <= 2^-64 by the noise rule ([`super::noise`]), with the truncation steps planned for it.

use super::noise;
use crate::circuit::{Circuit, Layer, TruncStep};
use crate::params::{FheParams, LOG2_PFAIL_LIMIT};

/// One candidate parameter set judged on a circuit.
pub struct Candidate {
    pub params: FheParams,
    /// Noise with the truncation steps planned for this set.
    pub report: noise::NoiseReport,
    /// Relative cost in stock bootstraps.
    pub cost: f64,
    plan: Vec<(usize, Vec<TruncStep>)>,
}

impl Candidate {
    /// The circuit with this candidate's truncation plan and parameters.
    pub fn planned(&self, circuit: &Circuit) -> Circuit {
        let mut c = circuit.clone();
        apply_plan(&mut c, &self.plan);
        c.params = Some(self.params);
        c
    }
}

/// Every candidate set, each with its own plan of precise truncation steps.
pub fn candidates(circuit: &Circuit) -> Vec<Candidate> {
    FheParams::candidates()
        .into_iter()
        .map(|params| {
            let mut trial = circuit.clone();
            let plan = noise::plan_truncation(&trial, &params);
            apply_plan(&mut trial, &plan);
            Candidate {
                params,
                report: noise::analyse(&trial, &params),
                cost: trial.relative_cost(&params),
                plan,
            }
        })
        .collect()
}

/// The cheapest parameter set under which every bootstrap of the circuit meets the limit, with
/// the truncation steps that need the precise key marked in the circuit; or why no set does,
/// naming the layer and its widths.
pub fn choose_params(circuit: &mut Circuit) -> std::result::Result<FheParams, String> {
    let all = candidates(circuit);
    if let Some(best) = all
        .iter()
        .filter(|c| c.report.worst_log2_pfail() <= LOG2_PFAIL_LIMIT)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
    {
        apply_plan(circuit, &best.plan);
        return Ok(best.params);
    }
    let best_failure = all.into_iter().last().map(|c| c.report);
    let report = best_failure.expect("there is at least one candidate");
    let worst = report.worst();
    if report.output_is_worst() {
        return Err(format!(
            "no parameter set runs this circuit exactly: decrypting the {}-bit scores of the output layer \
             reaches p-fail 2^{:.1} > 2^{LOG2_PFAIL_LIMIT} even with the most precise bootstrap; \
             use fewer weight bits in the output layer or fewer activation bits in the layer before it",
            circuit.output.bits, report.output_log2_pfail
        ));
    }
    Err(format!(
        "no parameter set runs this circuit exactly: layer {} ({} accumulator bits, {} read by the table) \
         reaches p-fail 2^{:.1} > 2^{LOG2_PFAIL_LIMIT} even with the most precise bootstrap; \
         use fewer weight or activation bits or a narrower window",
        worst.name, worst.acc_bits, worst.lut_bits, worst.log2_pfail
    ))
}

fn apply_plan(circuit: &mut Circuit, plan: &[(usize, Vec<TruncStep>)]) {
    for (i, steps) in plan {
        if let Layer::Requant(r) = &mut circuit.layers[*i] {
            r.steps = steps.clone();
        }
    }
}
