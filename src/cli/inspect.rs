use std::fmt;

use serde::Serialize;

use super::output::Output;
use super::ModelArgs;
use crate::circuit::{Circuit, Layer, Linear, LinearOp, Requant};
use crate::compile::{candidates, noise};
use crate::io::container::hex;
use crate::params::{FheParams, LOG2_PFAIL_LIMIT};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the report as one JSON document (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

/// Everything `pkn inspect` shows about a compiled circuit.
#[derive(Serialize)]
struct Report {
    model: String,
    circuit_id: String,
    format: u32,
    input: Input,
    layers: Vec<LayerRow>,
    output: OutputRow,
    totals: Totals,
    parameters: Parameters,
    candidates: Vec<CandidateRow>,
    /// The cost model's estimate for 2 CPU cores.
    estimated_seconds: f64,
    memory: Memory,
}

#[derive(Serialize)]
struct Input {
    /// Channels, height, width.
    shape: [usize; 3],
    bits: u32,
    encoding_bits: u32,
}

/// A linear layer (conv, dense, sum pool) or a table layer; the table fields are None for linear ones.
#[derive(Serialize)]
struct LayerRow {
    name: String,
    kind: &'static str,
    operation: String,
    /// Channels, height, width of the output.
    shape: [usize; 3],
    outputs: usize,
    residual_from: Option<String>,
    acc_bits: Option<u32>,
    table_bits: Option<u32>,
    split_table: Option<bool>,
    truncation_steps: Vec<Step>,
    /// Decomposition of the key the table's bootstraps use, as "2^12x3".
    table_key: Option<String>,
    bootstraps: u64,
    log2_pfail: Option<f64>,
    estimated_seconds: Option<f64>,
}

#[derive(Serialize)]
struct Step {
    bits: u32,
    precise: bool,
    /// The last step before a split table, which also reads the table's lowest bit.
    reads_table_bit: bool,
    /// Its bootstraps other than the precise one run on the narrow key.
    narrow: bool,
    /// Decomposition of the key of each of the step's bootstraps, in the order they run.
    keys: Vec<String>,
}

#[derive(Serialize)]
struct OutputRow {
    classes: usize,
    bits: u32,
    log2_pfail: f64,
}

#[derive(Serialize)]
struct Totals {
    bootstraps: u64,
    truncation_bootstraps: u64,
    table_bootstraps: u64,
}

#[derive(Serialize)]
struct Parameters {
    name: String,
    worst_log2_pfail: f64,
    log2_pfail_limit: f64,
}

#[derive(Serialize)]
struct CandidateRow {
    name: String,
    worst_log2_pfail: f64,
    /// The layer of the worst bootstrap, or "output" when decrypting the scores is the worst.
    worst_in: String,
    meets_limit: bool,
    /// In stock bootstraps.
    cost: f64,
}

/// The CPU engine's memory in `pkn infer`, estimated.
#[derive(Serialize)]
struct Memory {
    expanded_key_bytes: u64,
    expanding_key_bytes: u64,
    live_ciphertexts: usize,
    /// The layer where the most ciphertexts are live, and whether in its "sums" or "bootstraps".
    live_at: String,
    live_in: &'static str,
    ciphertext_bytes: u64,
    peak_bytes: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let compiled = a.model.circuit()?;
    // A circuit no parameter set runs exactly is shown with the most precise set, then refused.
    let all = candidates(&compiled);
    let refusal = compiled.fhe_params().err();
    let c = match refusal {
        None => compiled.clone(),
        Some(_) => all.last().expect("there are candidates").planned(&compiled),
    };
    let params = c.params.expect("planned circuits carry parameters");
    let noise = noise::analyse(&c, &noise::LinearNorms::of(&c), &params);
    let mut pfails = noise.layers.iter().map(|n| n.log2_pfail);
    let layers = c
        .layers
        .iter()
        .map(|layer| match layer {
            Layer::Linear(l) => linear_row(&c, l),
            Layer::Requant(r) => table_row(r, &params, pfails.next().unwrap_or(0.0)),
        })
        .collect();
    let (pbs, trunc) = c.pbs_counts();
    let (live, at) = c.peak_live_ciphertexts();
    let (live_at, live_in) = match &c.layers[at] {
        Layer::Linear(l) => (l.name.clone(), "sums"),
        Layer::Requant(r) => (r.name.clone(), "bootstraps"),
    };
    let ciphertext_bytes = live as u64 * params.ciphertext_bytes();
    let s = c.input.shape;
    let report = Report {
        model: c.name.clone(),
        circuit_id: hex(&c.id()),
        format: c.version,
        input: Input {
            shape: [s.channels, s.height, s.width],
            bits: c.input.bits,
            encoding_bits: c.input.encoding_bits,
        },
        layers,
        output: OutputRow {
            classes: c.output.classes.len(),
            bits: c.output.bits,
            log2_pfail: noise.output_log2_pfail,
        },
        totals: Totals {
            bootstraps: pbs,
            truncation_bootstraps: trunc,
            table_bootstraps: pbs - trunc,
        },
        parameters: Parameters {
            name: params.name(),
            worst_log2_pfail: noise.worst_log2_pfail(),
            log2_pfail_limit: LOG2_PFAIL_LIMIT,
        },
        candidates: all
            .iter()
            .map(|candidate| CandidateRow {
                name: candidate.params.name(),
                worst_log2_pfail: candidate.report.worst_log2_pfail(),
                worst_in: if candidate.report.output_is_worst() {
                    "output".into()
                } else {
                    candidate.report.worst().name
                },
                meets_limit: candidate.report.worst_log2_pfail() <= LOG2_PFAIL_LIMIT,
                cost: candidate.cost,
            })
            .collect(),
        estimated_seconds: FheParams::estimated_seconds(c.relative_cost(&params)),
        memory: Memory {
            expanded_key_bytes: params.expanded_key_bytes(),
            expanding_key_bytes: params.expanding_key_bytes(),
            live_ciphertexts: live,
            live_at,
            live_in,
            ciphertext_bytes,
            peak_bytes: (params.expanded_key_bytes() + ciphertext_bytes).max(params.expanding_key_bytes()),
        },
    };
    Output::new(a.json).report(&report)?;
    match refusal {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

fn linear_row(c: &Circuit, l: &Linear) -> LayerRow {
    let channels = l.out_shape.channels;
    let (kind, op) = match l.op {
        LinearOp::Conv2d {
            kernel,
            stride,
            padding,
            ..
        } => (
            "conv",
            format!("conv {kernel}x{kernel}/{stride} pad {padding} -> {channels}"),
        ),
        LinearOp::Dense => ("dense", format!("dense -> {channels}")),
        LinearOp::SumPool { kernel, .. } => ("sum_pool", format!("sum pool {kernel}x{kernel}")),
    };
    let residual_from = l
        .residual
        .as_ref()
        .map(|r| match r.from.checked_sub(1).map(|i| &c.layers[i]) {
            Some(Layer::Linear(l)) => l.name.clone(),
            Some(Layer::Requant(q)) => q.name.clone(),
            None => "input".into(),
        });
    let s = l.out_shape;
    LayerRow {
        name: l.name.clone(),
        kind,
        operation: match &residual_from {
            Some(source) => format!("{op} + {source}"),
            None => op,
        },
        shape: [s.channels, s.height, s.width],
        outputs: s.len(),
        residual_from,
        acc_bits: None,
        table_bits: None,
        split_table: None,
        truncation_steps: Vec::new(),
        table_key: None,
        bootstraps: 0,
        log2_pfail: None,
        estimated_seconds: None,
    }
}

fn table_row(r: &Requant, params: &FheParams, log2_pfail: f64) -> LayerRow {
    let steps: Vec<Step> = r
        .steps
        .iter()
        .zip(r.step_rules(&r.steps))
        .map(|(s, rule)| Step {
            bits: s.bits,
            precise: s.precise,
            reads_table_bit: rule.keeps_bit,
            narrow: s.narrow,
            keys: rule.keys().map(|key| params.key_label(key)).collect(),
        })
        .collect();
    let split = if r.split_table() { "split " } else { "" };
    let s = r.shape;
    LayerRow {
        name: r.name.clone(),
        kind: "table",
        operation: format!("truncate {} + {split}table", steps_label(&steps)),
        shape: [s.channels, s.height, s.width],
        outputs: s.len(),
        residual_from: None,
        acc_bits: Some(r.acc_bits),
        table_bits: Some(r.lut_bits),
        split_table: Some(r.split_table()),
        truncation_steps: steps,
        table_key: Some(params.key_label(r.table_key)),
        bootstraps: r.bootstraps(),
        log2_pfail: Some(log2_pfail),
        estimated_seconds: Some(r.estimated_seconds(params)),
    }
}

/// Truncation steps as "4+2 bits", with precise steps marked by "*" and narrow ones by "n"; before
/// a split table, the last step's read of the table's lowest bit shows as a final "+1".
fn steps_label(steps: &[Step]) -> String {
    let parts: Vec<String> = steps
        .iter()
        .map(|s| {
            let mark = format!(
                "{}{}",
                if s.precise { "*" } else { "" },
                if s.narrow { "n" } else { "" }
            );
            if s.reads_table_bit {
                format!("{}+1{mark}", s.bits - 1)
            } else {
                format!("{}{mark}", s.bits)
            }
        })
        .collect();
    if parts.is_empty() {
        return "0 bits".into();
    }
    format!("{} bits", parts.join("+"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(
            f,
            "model {} (circuit id {}, format {})",
            self.model, self.circuit_id, self.format
        )?;
        let [channels, height, width] = self.input.shape;
        writeln!(
            f,
            "input {channels}x{height}x{width}: {}-bit pixels, encoded with B = {}",
            self.input.bits, self.input.encoding_bits
        )?;
        writeln!(
            f,
            "{:<10} {:<32} {:>10} {:>6} {:>5} {:>10} {:>9} {:>12} {:>8}",
            "layer", "operation", "outputs", "B", "W", "PBS", "table key", "log2 p-fail", "est. s"
        )?;
        for l in &self.layers {
            match (
                l.acc_bits,
                l.table_bits,
                l.log2_pfail,
                l.estimated_seconds,
                &l.table_key,
            ) {
                (Some(b), Some(w), Some(pfail), Some(secs), Some(key)) => writeln!(
                    f,
                    "{:<10} {:<32} {:>10} {b:>6} {w:>5} {:>10} {key:>9} {pfail:>12.1} {secs:>8.1}",
                    l.name, l.operation, l.outputs, l.bootstraps
                )?,
                _ => writeln!(f, "{:<10} {:<32} {:>10}", l.name, l.operation, l.outputs)?,
            }
        }
        let o = &self.output;
        writeln!(
            f,
            "output: {} classes, {}-bit signed, decryption log2 p-fail {:.1}",
            o.classes, o.bits, o.log2_pfail
        )?;
        let t = &self.totals;
        writeln!(
            f,
            "bootstraps: {} ({} exact truncation steps, {} tables)",
            t.bootstraps, t.truncation_bootstraps, t.table_bootstraps
        )?;
        let p = &self.parameters;
        writeln!(
            f,
            "parameters: {} (security from tfhe's stock 2_2 TUniform keys; worst log2 p-fail {:.1}, limit {})",
            p.name, p.worst_log2_pfail, p.log2_pfail_limit
        )?;
        for c in &self.candidates {
            let verdict = if c.meets_limit { "meets" } else { "fails" };
            writeln!(
                f,
                "  candidate {}: worst log2 p-fail {:.1} in {} ({verdict} the limit), cost {:.0} stock bootstraps",
                c.name, c.worst_log2_pfail, c.worst_in, c.cost
            )?;
        }
        writeln!(
            f,
            "estimated encrypted inference on 2 cores: {:.0} s (estimate from the cost model, not a measurement)",
            self.estimated_seconds
        )?;
        let m = &self.memory;
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        writeln!(
            f,
            "memory of pkn infer on the CPU: server key expanded {:.0} MiB; at most {} ciphertexts live ({}'s {}), {:.0} MiB; \
             peak about {:.0} MiB ({:.0} MiB while the key expands; estimate, not a measurement)",
            mib(m.expanded_key_bytes),
            m.live_ciphertexts,
            m.live_at,
            m.live_in,
            mib(m.ciphertext_bytes),
            mib(m.peak_bytes),
            mib(m.expanding_key_bytes)
        )
    }
}
