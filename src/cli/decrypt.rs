use std::path::PathBuf;

use anyhow::Context;

use super::output::Output;
use super::prediction::Prediction;
use super::{DEFAULT_CLIENT_KEY, DEFAULT_OUTPUT};
use crate::io::container::{self, hex, Ids, Kind};
use crate::io::payload::EncryptedOutput;
use crate::keys::ClientKey;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The client (secret) key.
    #[arg(long, default_value = DEFAULT_CLIENT_KEY)]
    pub key: PathBuf,
    /// The encrypted result written by `pkn infer`.
    #[arg(short, long, default_value = DEFAULT_OUTPUT)]
    pub input: PathBuf,
    /// Print the prediction as one JSON document (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (ids, result): (Ids, EncryptedOutput) = container::read(&a.input, Kind::OutputCiphertext)?;
    let (_, key): (_, ClientKey) = container::read(&a.key, Kind::ClientKey)?;
    if ids.key != key.key_id {
        anyhow::bail!(
            "{} was computed under key {}, but {} is key {}: wrong key",
            a.input.display(),
            hex(&ids.key),
            a.key.display(),
            hex(&key.key_id)
        );
    }
    key.check()
        .with_context(|| format!("{} is not a usable client key", a.key.display()))?;
    result
        .check(&key.params)
        .with_context(|| format!("{} is not a usable encrypted result", a.input.display()))?;
    let scores = key.decrypt(&result.ciphertexts, result.output.bits);
    Output::new(a.json).report(&Prediction::new(&result.output, scores))
}
