use std::path::PathBuf;
use std::time::Instant;

use super::{check_overwrite, ModelArgs, DEFAULT_CLIENT_KEY, DEFAULT_SERVER_KEY};
use crate::io::container::{self, Ids, Kind};
use crate::keys::ClientKey;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the client (secret) key; created with mode 0600.
    #[arg(long, default_value = DEFAULT_CLIENT_KEY)]
    pub client_key: PathBuf,
    /// Where to write the server (evaluation) key.
    #[arg(long, default_value = DEFAULT_SERVER_KEY)]
    pub server_key: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    check_overwrite(&a.client_key, a.force)?;
    check_overwrite(&a.server_key, a.force)?;
    let circuit = a.model.circuit()?;
    let params = circuit.fhe_params()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("generating keys for {} ({})", circuit.name, params.name()));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let start = Instant::now();
    let (client, server) = ClientKey::generate(params);
    let ids = Ids {
        key: client.key_id,
        model: [0; 16],
    };
    container::write(&a.server_key, Kind::ServerKey, ids, &server, false)?;
    container::write(&a.client_key, Kind::ClientKey, ids, &client, true)?;
    bar.finish_and_clear();
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;
    println!(
        "keys {} for {} in {:.1} s: {} ({:.1} MiB, secret, mode 0600), {} ({:.1} MiB)",
        container::hex(&client.key_id),
        params.name(),
        start.elapsed().as_secs_f64(),
        a.client_key.display(),
        size(&a.client_key),
        a.server_key.display(),
        size(&a.server_key),
    );
    Ok(())
}
