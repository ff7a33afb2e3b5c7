//! Parameter choice: the cheapest TFHE parameter set under which every bootstrap meets
//! p-fail <= 2^-64 by the noise rule ([`super::noise`]), with the truncation steps planned for it
//! and each table layer's key chosen.
//!
//! For each precise key, alone or with each cheaper medium key, with or without the narrow key
//! (which the truncation planner uses where its coarser modulus switch allows), every table starts
//! on the precise key; then, layer by layer from the input, a table moves to the cheapest of the
//! set's other keys (narrow, cheap, medium) under which the whole circuit still meets the limit
//! (its truncation steps planned again) and costs less. A table's key sets the noise its consumers
//! read, so the deep layers of a wide network no longer make every table pay for the most precise
//! key.

use super::noise::{self, LinearNorms};
use crate::circuit::{Circuit, Layer, TruncStep};
use crate::params::{Bootstrap, FheParams, DECOMPOSITIONS, LOG2_PFAIL_LIMIT};

/// How a candidate runs each table layer (by layer index): its truncation steps and table key.
type Plan = Vec<(usize, Vec<TruncStep>, Bootstrap)>;

/// One candidate parameter set judged on a circuit.
pub struct Candidate {
    pub params: FheParams,
    /// Noise with the truncation steps and table keys planned for this set.
    pub report: noise::NoiseReport,
    /// Relative cost in stock bootstraps.
    pub cost: f64,
    plan: Plan,
}

impl Candidate {
    /// The circuit with this candidate's plan and parameters.
    pub fn planned(&self, circuit: &Circuit) -> Circuit {
        let mut c = circuit.clone();
        apply_plan(&mut c, &self.plan);
        c.params = Some(self.params);
        c
    }

    fn meets_limit(&self) -> bool {
        self.report.worst_log2_pfail() <= LOG2_PFAIL_LIMIT
    }

    /// `params` on `trial` with the given table keys (one per table layer, in order), planned in
    /// place (the circuit is large: it is not copied per trial).
    fn judge(trial: &mut Circuit, norms: &LinearNorms, params: FheParams, table_keys: &[Bootstrap]) -> Candidate {
        let tables = trial.layers.iter_mut().filter_map(|layer| match layer {
            Layer::Requant(r) => Some(r),
            Layer::Linear(_) => None,
        });
        for (r, &key) in tables.zip(table_keys) {
            r.table_key = key;
        }
        let plan: Plan = noise::plan_truncation(trial, norms, &params)
            .into_iter()
            .zip(table_keys)
            .map(|((i, steps), &key)| (i, steps, key))
            .collect();
        apply_plan(trial, &plan);
        Candidate {
            params,
            report: noise::analyse(trial, norms, &params),
            cost: trial.relative_cost(&params),
            plan,
        }
    }

    /// The cheapest table keys for `params`, moving one table at a time off the precise key.
    fn best_keys(trial: &mut Circuit, norms: &LinearNorms, params: FheParams) -> Candidate {
        let tables = trial.layers.iter().filter(|l| matches!(l, Layer::Requant(_))).count();
        let mut keys = vec![Bootstrap::Precise; tables];
        let mut best = Self::judge(trial, norms, params, &keys);
        if !best.meets_limit() {
            return best;
        }
        let cheaper: Vec<Bootstrap> = params.keys().into_iter().skip(1).rev().collect();
        for i in 0..tables {
            for &key in &cheaper {
                keys[i] = key;
                let judged = Self::judge(trial, norms, params, &keys);
                if judged.meets_limit() && judged.cost < best.cost {
                    best = judged;
                    break;
                }
                keys[i] = Bootstrap::Precise;
            }
        }
        best
    }
}

/// Every precise key, each with the medium key (or none), narrow key (or none) and table keys that
/// make it cheapest.
pub fn candidates(circuit: &Circuit) -> Vec<Candidate> {
    let norms = LinearNorms::of(circuit);
    let mut trial = circuit.clone();
    FheParams::candidates()
        .into_iter()
        .map(|precise| {
            let mediums = DECOMPOSITIONS.into_iter().filter_map(|m| precise.with_medium(m));
            std::iter::once(precise)
                .chain(mediums)
                .flat_map(|params| [params, params.with_narrow()])
                .map(|params| Candidate::best_keys(&mut trial, &norms, params))
                .reduce(|a, b| {
                    if b.meets_limit() && (!a.meets_limit() || b.cost < a.cost) {
                        b
                    } else {
                        a
                    }
                })
                .expect("every precise key is a candidate alone")
        })
        .collect()
}

/// The cheapest parameter set under which every bootstrap of the circuit meets the limit, with
/// the truncation steps and table keys marked in the circuit; or why no set does, naming the
/// layer and its widths.
pub fn choose_params(circuit: &mut Circuit) -> std::result::Result<FheParams, String> {
    let all = candidates(circuit);
    if let Some(best) = all
        .iter()
        .filter(|c| c.meets_limit())
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

fn apply_plan(circuit: &mut Circuit, plan: &Plan) {
    for (i, steps, key) in plan {
        if let Layer::Requant(r) = &mut circuit.layers[*i] {
            r.steps = steps.clone();
            r.table_key = *key;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::tests::small_circuit;

    fn table_key(circuit: &Circuit) -> Bootstrap {
        match &circuit.layers[1] {
            Layer::Requant(r) => r.table_key,
            Layer::Linear(_) => unreachable!("layer 1 is the table layer"),
        }
    }

    /// The 2^12 x 3 candidate's plan for `circuit`, and the cost of its keys with every table on
    /// the precise one.
    fn planned_on_2_12x3(circuit: &Circuit) -> (Circuit, f64, f64) {
        let norms = LinearNorms::of(circuit);
        let best = candidates(circuit).swap_remove(2);
        assert_eq!(best.params.decomposition(Bootstrap::Precise), (12, 3));
        let all_precise = Candidate::judge(&mut circuit.clone(), &norms, best.params, &[Bootstrap::Precise]);
        (best.planned(circuit), best.cost, all_precise.cost)
    }

    #[test]
    fn a_table_moves_to_the_cheap_key_where_its_consumer_tolerates_the_noise() {
        // 8-bit scores: the cheap key's output noise leaves z = 20 at decryption.
        let (planned, cost, all_precise) = planned_on_2_12x3(&small_circuit());
        assert_eq!(table_key(&planned), Bootstrap::Cheap);
        assert!(cost < all_precise, "{cost} {all_precise}");
    }

    #[test]
    fn a_table_stays_on_the_precise_key_where_its_consumer_needs_it() {
        // 18-bit scores: only the precise key's output noise decrypts them at 2^-64.
        let mut circuit = small_circuit();
        circuit.output.bits = 18;
        let (planned, cost, all_precise) = planned_on_2_12x3(&circuit);
        assert_eq!(table_key(&planned), Bootstrap::Precise);
        assert_eq!(cost, all_precise);
        assert!(
            Candidate::judge(
                &mut planned.clone(),
                &LinearNorms::of(&planned),
                FheParams::stock_2_2_with_pbs(12, 3),
                &[Bootstrap::Cheap]
            )
            .report
            .worst_log2_pfail()
                > LOG2_PFAIL_LIMIT
        );
    }
}
