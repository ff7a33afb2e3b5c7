use super::ModelArgs;
use crate::circuit::{Layer, LinearOp};
use crate::compile::{candidates, noise};
use crate::io::container::hex;
use crate::params::{FheParams, LOG2_PFAIL_LIMIT};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
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
    let report = noise::analyse(&c, &params);
    println!("model {} (circuit id {}, format {})", c.name, hex(&c.id()), c.version);
    let s = c.input.shape;
    println!(
        "input {}x{}x{}: {}-bit pixels, encoded with B = {}",
        s.channels, s.height, s.width, c.input.bits, c.input.encoding_bits
    );
    println!(
        "{:<10} {:<32} {:>10} {:>6} {:>5} {:>10} {:>12} {:>8}",
        "layer", "operation", "outputs", "B", "W", "PBS", "log2 p-fail", "est. s"
    );
    let mut noise_iter = report.layers.iter();
    for layer in &c.layers {
        match layer {
            Layer::Linear(l) => {
                let op = match l.op {
                    LinearOp::Conv2d {
                        kernel,
                        stride,
                        padding,
                        ..
                    } => {
                        format!(
                            "conv {kernel}x{kernel}/{stride} pad {padding} -> {}",
                            l.out_shape.channels
                        )
                    }
                    LinearOp::Dense => format!("dense -> {}", l.out_shape.channels),
                    LinearOp::SumPool { kernel, .. } => format!("sum pool {kernel}x{kernel}"),
                };
                let op = match &l.residual {
                    Some(r) => {
                        let source = match r.from.checked_sub(1).map(|i| &c.layers[i]) {
                            Some(Layer::Linear(l)) => l.name.as_str(),
                            Some(Layer::Requant(q)) => q.name.as_str(),
                            None => "input",
                        };
                        format!("{op} + {source}")
                    }
                    None => op,
                };
                println!("{:<10} {:<32} {:>10}", l.name, op, l.out_shape.len());
            }
            Layer::Requant(r) => {
                let pfail = noise_iter.next().map_or(0.0, |n| n.log2_pfail);
                println!(
                    "{:<10} {:<32} {:>10} {:>6} {:>5} {:>10} {:>12.1} {:>8.1}",
                    r.name,
                    format!(
                        "truncate {} + {}table",
                        steps_label(r),
                        if r.split_table() { "split " } else { "" }
                    ),
                    r.shape.len(),
                    r.acc_bits,
                    r.lut_bits,
                    r.bootstraps(),
                    pfail,
                    r.estimated_seconds(&params)
                );
            }
        }
    }
    println!(
        "output: {} classes, {}-bit signed, decryption log2 p-fail {:.1}",
        c.output.classes.len(),
        c.output.bits,
        report.output_log2_pfail
    );
    let (pbs, trunc) = c.pbs_counts();
    println!(
        "bootstraps: {pbs} ({trunc} exact truncation steps, {} tables)",
        pbs - trunc
    );
    println!(
        "parameters: {} (security from tfhe's stock 2_2 TUniform keys; worst log2 p-fail {:.1}, limit {LOG2_PFAIL_LIMIT})",
        params.name(),
        report.worst_log2_pfail()
    );
    for candidate in &all {
        let worst = candidate.report.worst_log2_pfail();
        let verdict = if worst <= LOG2_PFAIL_LIMIT { "meets" } else { "fails" };
        let place = if candidate.report.output_is_worst() {
            "output".into()
        } else {
            candidate.report.worst().name
        };
        println!(
            "  candidate {}: worst log2 p-fail {worst:.1} in {place} ({verdict} the limit), cost {:.0} stock bootstraps",
            candidate.params.name(),
            candidate.cost
        );
    }
    let secs = FheParams::estimated_seconds(c.relative_cost(&params));
    println!("estimated encrypted inference on 2 cores: {secs:.0} s (estimate from the cost model, not a measurement)");
    let (live, at) = c.peak_live_ciphertexts();
    let (step, part) = match &c.layers[at] {
        Layer::Linear(l) => (&l.name, "sums"),
        Layer::Requant(r) => (&r.name, "bootstraps"),
    };
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let ciphertexts = live as u64 * params.ciphertext_bytes();
    let keys = params.expanded_key_bytes();
    let expanding = params.expanding_key_bytes();
    let peak = (keys + ciphertexts).max(expanding);
    println!(
        "memory of pkn infer on the CPU: server key expanded {:.0} MiB; at most {live} ciphertexts live ({step}'s {part}), {:.0} MiB; \
         peak about {:.0} MiB ({:.0} MiB while the key expands; estimate, not a measurement)",
        mib(keys),
        mib(ciphertexts),
        mib(peak),
        mib(expanding)
    );
    match refusal {
        None => Ok(()),
        Some(err) => Err(err.into()),
    }
}

/// Truncation steps as "4+2 bits" with precise steps marked by "*"; before a split table, the last
/// step's read of the table's lowest bit shows as a final "+1".
fn steps_label(r: &crate::circuit::Requant) -> String {
    let parts: Vec<String> = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mark = if s.precise { "*" } else { "" };
            if r.step_keeps_bit(i, r.steps.len()) {
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
