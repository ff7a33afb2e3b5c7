//! Table layers: exact truncation of an accumulator, step by step, then one table per channel.
//! The rules of each truncation step (its kind, its bootstraps and their keys) live here once;
//! the FHE engines, the noise planner and the cost model all ask them.

use serde::{Deserialize, Serialize};

use super::Shape;
use crate::params::{Bootstrap, FheParams};

/// Widest table one bootstrap reads at 2^-64 (4 bits plus the padding bit, N = 2048).
pub const DIRECT_TABLE_BITS: u32 = 4;
/// Widest table the FHE evaluator runs: 5 bits, as a split table of two bootstraps after its
/// lowest bit is read by the last truncation step.
pub const MAX_FHE_TABLE_BITS: u32 = 5;

/// Exact truncation followed by one table lookup per activation.
///
/// With `m` the accumulator, `s = acc_bits - lut_bits` and `t = (m >> s) mod 2^(lut_bits + 1)`
/// (floor shift), a direct table (W <= 4) outputs `tables[c][t]` if `t < 2^lut_bits`, else
/// `-tables[c][t - 2^lut_bits]` (the negacyclic half of the bootstrap; reached only when m left
/// its window). A split table (W = 5, docs/circuit.md) outputs the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requant {
    pub name: String,
    pub shape: Shape,
    /// B: bits held by the accumulator ciphertexts (plus one padding bit).
    pub acc_bits: u32,
    /// W: bits read by the final table.
    pub lut_bits: u32,
    /// One table of 2^W entries per channel.
    pub tables: Vec<Vec<i64>>,
    /// B of the encoding of the output (the next consumer's `acc_bits`, or the circuit's `output_bits`).
    pub output_encoding_bits: u32,
    /// Width of the output activations (unsigned).
    pub output_bits: u32,
    /// How the low bits are removed, lowest first ([`Requant::truncated_bits`] of them); set by
    /// the parameter choice. Affects cost and noise only, never the result.
    pub steps: Vec<TruncStep>,
    /// Key of the table's bootstraps: the cheapest whose output noise every consumer of the layer
    /// tolerates; set by the parameter choice. Affects cost and noise only, never the result.
    pub table_key: Bootstrap,
}

/// One exact truncation step: removes `bits` (1 to 5) low bits of the accumulator ([`StepKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncStep {
    pub bits: u32,
    /// Whether the bootstrap whose output stays in the accumulator for later steps (a digit's
    /// table, an extended step's sign) uses the precise key.
    pub precise: bool,
    /// Whether the step's other bootstraps (all of them, if not `precise`) use the narrow key; a
    /// narrow 4-bit step is extended (its sign reads 4 bits, not 5).
    pub narrow: bool,
}

/// How a step removes its bits (docs/circuit.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A digit of 2 to 4 bits: a sign bootstrap reads the bit above the digit only to clear it
    /// from the digit's input; a table returns the digit.
    Digit(u32),
    /// `digit` bits (0 to 4) and the bit above them: a sign bootstrap reads that bit and its
    /// output, at the accumulator's scale, removes it; then a table returns the digit, if any. A
    /// single bit is `Extended(0)`; 5 bits are `Extended(4)`; the last step before a split table
    /// is always extended, and its sign's output also serves the table.
    Extended(u32),
}

/// A step as it runs in its layer: its kind and the key of each of its bootstraps. The one
/// statement of the step rules: the FHE engines build and run steps from it, the noise planner
/// and the cost model price them with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepRule {
    pub kind: StepKind,
    /// Key of the sign bootstrap, which reads the bit above the digit.
    pub sign_key: Bootstrap,
    /// Key of the table that returns the digit, for a step that has one.
    pub digit_key: Option<Bootstrap>,
    /// The last step before a split table: its sign output is kept for the table.
    pub keeps_bit: bool,
}

impl TruncStep {
    /// How the step runs; `keeps_bit` for the last step before a split table. The bootstrap whose
    /// output stays in the accumulator (a digit's table, an extended step's sign) uses the step's
    /// key; the other one, whose output is only read once more, the cheap (or narrow) key.
    pub fn rule(&self, keeps_bit: bool) -> StepRule {
        let cheap = if self.narrow {
            Bootstrap::Narrow
        } else {
            Bootstrap::Cheap
        };
        let key = if self.precise { Bootstrap::Precise } else { cheap };
        let extended = keeps_bit || self.bits == 1 || self.bits == 5 || (self.narrow && self.bits == 4);
        let (kind, sign_key, digit_key) = if extended {
            let digit = self.bits - 1;
            (StepKind::Extended(digit), key, (digit > 0).then_some(cheap))
        } else {
            (StepKind::Digit(self.bits), cheap, Some(key))
        };
        StepRule {
            kind,
            sign_key,
            digit_key,
            keeps_bit,
        }
    }
}

impl StepRule {
    /// Bits of the digit the step's table returns (0: a single bit, no table).
    pub fn digit_bits(&self) -> u32 {
        match self.kind {
            StepKind::Digit(bits) | StepKind::Extended(bits) => bits,
        }
    }

    /// The keys of the step's bootstraps, in the order they run: the sign's, then the digit's.
    pub fn keys(&self) -> impl Iterator<Item = Bootstrap> {
        std::iter::once(self.sign_key).chain(self.digit_key)
    }

    pub fn bootstraps(&self) -> u64 {
        self.keys().count() as u64
    }

    /// Relative cost of the step in stock bootstraps.
    pub fn relative_cost(&self, params: &FheParams) -> f64 {
        self.keys().map(|key| params.relative_pbs_cost(key)).sum()
    }
}

impl Requant {
    /// Number of low bits removed by exact truncation.
    pub fn shift(&self) -> u32 {
        self.acc_bits - self.lut_bits
    }

    /// Whether the table is wider than one bootstrap reads, and so split (docs/circuit.md).
    pub fn split_table(&self) -> bool {
        self.lut_bits > DIRECT_TABLE_BITS
    }

    /// Bits the truncation steps remove: [`Requant::shift`], and a split table's lowest bit.
    pub fn truncated_bits(&self) -> u32 {
        self.shift() + u32::from(self.split_table())
    }

    /// How each of `steps` runs in this layer (the last one keeps its bit before a split table).
    pub fn step_rules(&self, steps: &[TruncStep]) -> Vec<StepRule> {
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| s.rule(self.split_table() && i + 1 == steps.len()))
            .collect()
    }

    /// Bootstraps of the table itself: one, or two for a split table (its halves).
    pub fn table_pbs_per_activation(&self) -> u64 {
        if self.split_table() {
            2
        } else {
            1
        }
    }

    /// Bootstraps per activation: the truncation steps' plus the table's.
    pub fn pbs_per_activation(&self) -> u64 {
        self.truncation_pbs_per_activation() + self.table_pbs_per_activation()
    }

    /// Bootstraps of the whole layer.
    pub fn bootstraps(&self) -> u64 {
        self.shape.len() as u64 * self.pbs_per_activation()
    }

    /// Bootstraps per activation spent on truncation.
    pub fn truncation_pbs_per_activation(&self) -> u64 {
        self.step_rules(&self.steps).iter().map(StepRule::bootstraps).sum()
    }

    /// Relative cost of one activation in stock bootstraps.
    pub fn relative_cost(&self, params: &FheParams) -> f64 {
        let table = params.relative_pbs_cost(self.table_key);
        self.steps_cost(&self.steps, params) + table * self.table_pbs_per_activation() as f64
    }

    /// Relative cost of `steps` in this layer, in stock bootstraps.
    pub fn steps_cost(&self, steps: &[TruncStep], params: &FheParams) -> f64 {
        self.step_rules(steps)
            .iter()
            .map(|rule| rule.relative_cost(params))
            .sum()
    }

    /// The cost model's estimate of this layer's encrypted time on 2 cores, in seconds.
    pub fn estimated_seconds(&self, params: &FheParams) -> f64 {
        FheParams::estimated_seconds(self.shape.len() as f64 * self.relative_cost(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_rules_give_each_bootstrap_its_key() {
        use Bootstrap::{Cheap, Narrow, Precise};
        let keyed = |bits, precise, narrow, keeps_bit| {
            let r = TruncStep { bits, precise, narrow }.rule(keeps_bit);
            (r.kind, r.keys().collect::<Vec<_>>())
        };
        let rule = |bits, precise, keeps_bit| keyed(bits, precise, false, keeps_bit);
        // A single bit: one sign bootstrap, whose output stays, on the step's key.
        assert_eq!(rule(1, true, false), (StepKind::Extended(0), vec![Precise]));
        // A digit: the sign only clears a bit of the digit's input (cheap); the digit stays.
        assert_eq!(rule(3, true, false), (StepKind::Digit(3), vec![Cheap, Precise]));
        // 5 bits, or the last step before a split table: the sign stays, the digit is cheap.
        assert_eq!(rule(5, true, false), (StepKind::Extended(4), vec![Precise, Cheap]));
        assert_eq!(rule(3, false, true), (StepKind::Extended(2), vec![Cheap, Cheap]));
        assert_eq!(rule(1, false, true), (StepKind::Extended(0), vec![Cheap]));
        // Narrow: the cheap bootstraps move to the narrow key, and a 4-bit step is extended.
        let narrow = |bits, precise| keyed(bits, precise, true, false);
        assert_eq!(narrow(3, false), (StepKind::Digit(3), vec![Narrow, Narrow]));
        assert_eq!(narrow(3, true), (StepKind::Digit(3), vec![Narrow, Precise]));
        assert_eq!(narrow(4, false), (StepKind::Extended(3), vec![Narrow, Narrow]));
        assert_eq!(narrow(1, false), (StepKind::Extended(0), vec![Narrow]));
        let params = FheParams::stock_2_2_with_pbs(12, 3);
        for bits in 1..=5 {
            for precise in [false, true] {
                let r = TruncStep {
                    bits,
                    precise,
                    narrow: false,
                }
                .rule(false);
                assert_eq!(r.bootstraps(), if bits == 1 { 1 } else { 2 });
                let cheap = params.relative_pbs_cost(Cheap);
                let own = params.relative_pbs_cost(if precise { Precise } else { Cheap });
                let want = own + if bits == 1 { 0.0 } else { cheap };
                assert!((r.relative_cost(&params) - want).abs() < 1e-12, "{bits} {precise}");
            }
        }
    }
}
