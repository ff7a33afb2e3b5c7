//! The command line: one module per subcommand, `output` for how they print (text or JSON),
//! `prediction` for the report two of them share; `main.rs` only parses and prints errors.

mod decrypt;
mod encrypt;
mod eval;
mod infer;
mod inspect;
mod keygen;
mod output;
mod prediction;

use std::path::Path;

use clap::{Parser, Subcommand};

use crate::circuit::Circuit;
use crate::compile::CompileOptions;
use crate::zoo::{Shipped, DEFAULT_MODEL};

pub const DEFAULT_CLIENT_KEY: &str = "client.key";
pub const DEFAULT_SERVER_KEY: &str = "server.key";
pub const DEFAULT_INPUT: &str = "input.ct";
pub const DEFAULT_OUTPUT: &str = "output.ct";

/// Exact encrypted inference for PolyKervNets (TFHE).
#[derive(Parser, Debug)]
#[command(name = "pkn", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that compiles a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Shipped model name (looked up in $PKN_WEIGHTS, ./weights, the source tree's weights/) or a path.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Size each accumulator window by its worst case instead of calibration plus a margin.
    #[arg(long)]
    pub worst_case: bool,
    /// Margin added to calibrated accumulator ranges (0.25 = 25 %) [default: the model's, else 0.25].
    #[arg(long)]
    pub margin: Option<f64>,
    /// Bits read by each table (W), 1 to 5 [default: the model's, else 4]. A 5-bit table costs
    /// two precise bootstraps instead of one, its lowest bit read by the last truncation step (a
    /// split table, docs/circuit.md).
    #[arg(long)]
    pub lut_bits: Option<u32>,
    /// Fraction of calibration activations clipped at each end of every activation range
    /// [default: the model's, else 0.001].
    #[arg(long)]
    pub act_clip: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate the client (secret) key and the server (evaluation) key.
    Keygen(keygen::Args),
    /// Encrypt a PNG image for the server.
    Encrypt(encrypt::Args),
    /// Run the model on the encrypted image (server side; needs only the server key).
    Infer(infer::Args),
    /// Decrypt the result and print the predicted class.
    Decrypt(decrypt::Args),
    /// Accuracy of the integer circuit on the Fashion-MNIST test set.
    Eval(eval::Args),
    /// Show the compiled circuit: layers, bit widths, bootstraps, parameters, estimated time.
    Inspect(inspect::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Encrypt(a) => encrypt::run(a),
        Command::Infer(a) => infer::run(a),
        Command::Decrypt(a) => decrypt::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => eval::run(a),
    }
}

impl ModelArgs {
    pub fn options(&self) -> CompileOptions {
        CompileOptions {
            worst_case: self.worst_case,
            margin: self.margin,
            lut_bits: self.lut_bits,
            act_clip: self.act_clip,
        }
    }

    /// Resolve, load and compile the model.
    pub fn circuit(&self) -> anyhow::Result<Circuit> {
        Ok(Shipped::find(&self.model)?.compile(&self.options())?)
    }
}

/// Refuse to replace an existing file unless `force`.
pub fn check_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!("{} already exists; pass --force to replace it", path.display());
    }
    Ok(())
}
