use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use super::output::{bootstrap_bar, Output};
use super::prediction::Prediction;
use super::{ModelArgs, DEFAULT_INPUT, DEFAULT_OUTPUT, DEFAULT_SERVER_KEY};
use crate::circuit::{Circuit, Layer};
use crate::eval::{clear, fhe};
use crate::io::checkpoint::{file_digest, Checkpointing, Resume};
use crate::io::container::{self, hex, Ids, Kind};
use crate::io::image::load_gray_png;
use crate::io::payload::{EncryptedInput, EncryptedOutput};
use crate::keys::ServerKey;
use crate::params::FheParams;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The server (evaluation) key.
    #[arg(long, default_value = DEFAULT_SERVER_KEY)]
    pub server_key: PathBuf,
    /// The encrypted image.
    #[arg(short, long, default_value = DEFAULT_INPUT)]
    pub input: PathBuf,
    /// Where to write the encrypted result.
    #[arg(short, long, default_value = DEFAULT_OUTPUT)]
    pub output: PathBuf,
    /// Run the integer reference on this plaintext PNG instead (no keys, no encryption).
    #[arg(long, value_name = "IMAGE")]
    pub clear: Option<PathBuf>,
    /// Run the bootstraps on an NVIDIA GPU (a build with `make gpu`).
    #[arg(long, conflicts_with = "clear")]
    pub gpu: bool,
    /// With --clear: print the prediction as one JSON document (docs/json.md).
    #[arg(long, requires = "clear")]
    pub json: bool,
}

/// Refuse `--gpu` before any work when this build or this machine cannot honour it.
#[cfg(feature = "gpu")]
fn check_gpu() -> anyhow::Result<()> {
    crate::eval::gpu::check_gpu()?;
    Ok(())
}

#[cfg(not(feature = "gpu"))]
const NO_GPU_SUPPORT: &str = "this pkn was built without GPU support; rebuild with `make gpu`";

#[cfg(not(feature = "gpu"))]
fn check_gpu() -> anyhow::Result<()> {
    anyhow::bail!(NO_GPU_SUPPORT)
}

/// The GPU engine with the key on the device.
#[cfg(feature = "gpu")]
fn gpu_engine(server_key: ServerKey) -> anyhow::Result<Box<dyn fhe::Bootstrapper>> {
    Ok(Box::new(crate::eval::gpu::GpuEngine::new(&server_key.decompress())?))
}

#[cfg(not(feature = "gpu"))]
fn gpu_engine(_: ServerKey) -> anyhow::Result<Box<dyn fhe::Bootstrapper>> {
    anyhow::bail!(NO_GPU_SUPPORT)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.gpu {
        check_gpu()?;
    }
    let circuit = a.model.circuit()?;
    if let Some(image) = &a.clear {
        let s = circuit.input.shape;
        let pixels = load_gray_png(image, s.width, s.height)?;
        let scores = clear::run(&circuit, &crate::encoding::quantize_pixels(&pixels, circuit.input.bits));
        let out = Output::new(a.json);
        out.note(format!(
            "clear integer circuit of {} on {}:",
            circuit.name,
            image.display()
        ));
        return out.report(&Prediction::new(&circuit.output, scores));
    }
    let params = circuit.fhe_params()?;
    let (input_ids, input): (Ids, EncryptedInput) = container::read(&a.input, Kind::InputCiphertext)?;
    let model_id = circuit.id();
    if input_ids.model != model_id {
        anyhow::bail!(
            "{} was encrypted for another model (id {}), not {} (id {}); encrypt with --model {}",
            a.input.display(),
            hex(&input_ids.model),
            circuit.name,
            hex(&model_id),
            a.model.model
        );
    }
    let (key_ids, server_key): (Ids, ServerKey) = container::read(&a.server_key, Kind::ServerKey)?;
    if key_ids.key != input_ids.key {
        anyhow::bail!(
            "{} was encrypted under key {}, but {} is key {}",
            a.input.display(),
            hex(&input_ids.key),
            a.server_key.display(),
            hex(&key_ids.key)
        );
    }
    if server_key.params != params {
        anyhow::bail!(
            "{} has parameters {}, model {} needs {}",
            a.server_key.display(),
            server_key.params.name(),
            circuit.name,
            params.name()
        );
    }
    server_key
        .check()
        .with_context(|| format!("{} is not a usable server key", a.server_key.display()))?;
    let ciphertexts = input
        .into_ciphertexts(&params, circuit.input.shape.len())
        .with_context(|| format!("{} is not a usable encrypted input", a.input.display()))?;
    let ids = Ids {
        key: key_ids.key,
        model: model_id,
    };
    let checkpoints = Checkpointing::acquire(&a.output, ids, file_digest(&a.input)?)?;
    let lwe_size = params.big_lwe_dimension() + 1;
    let state = match checkpoints.load(|state: &fhe::EncryptedState| state.fits_circuit(&circuit, lwe_size)) {
        Resume::From(state) => state,
        Resume::Fresh(reason) => {
            if let Some(reason) = reason {
                eprintln!("starting afresh: {reason}");
            }
            fhe::EncryptedState::start(&circuit, ciphertexts)
        }
    };
    let start = Instant::now();
    let cpu_key;
    let engine: Box<dyn fhe::Bootstrapper + '_> = if a.gpu {
        gpu_engine(server_key)?
    } else {
        cpu_key = server_key.expand();
        Box::new(fhe::Engine::new(&cpu_key))
    };
    let key_time = start.elapsed();
    let (pbs, trunc) = circuit.pbs_counts();
    let done = fhe::bootstraps_done(&circuit, &state);
    if state.next_layer > 0 {
        println!(
            "resuming from {} after layer {} of {} ({done} of {pbs} bootstraps done)",
            checkpoints.path().display(),
            state.next_layer,
            circuit.layers.len()
        );
    }
    let bar = bootstrap_bar(pbs, format!("inferring {}", circuit.name));
    bar.set_position(done);
    bar.reset_eta();
    let run_start = Instant::now();
    let mut layer_secs = Vec::new();
    let mut since = Instant::now();
    let outputs = fhe::resume(&circuit, engine.as_ref(), state, Some(&bar), |s| {
        layer_secs.push((s.next_layer - 1, since.elapsed().as_secs_f64()));
        let saved = checkpoints.save(s);
        since = Instant::now();
        saved
    })?;
    bar.finish_and_clear();
    let secs = run_start.elapsed().as_secs_f64();
    let run_pbs = pbs - done;
    let payload = EncryptedOutput {
        output: circuit.output.clone(),
        ciphertexts: outputs,
    };
    container::write(&a.output, Kind::OutputCiphertext, ids, &payload, false)?;
    checkpoints.finish()?;
    println!(
        "{}: {pbs} bootstraps ({trunc} for exact truncation); {run_pbs} run in {secs:.1} s ({:.2} ms each, key \
         loaded in {:.1} s); encrypted result in {}",
        circuit.name,
        secs * 1000.0 / run_pbs.max(1) as f64,
        key_time.as_secs_f64(),
        a.output.display()
    );
    print_layer_times(&circuit, &params, &layer_secs);
    Ok(())
}

/// Measured seconds of each table layer run (its linear layers included, checkpoint excluded)
/// next to the cost model's estimate for 2 CPU cores, which `pkn inspect` prints.
fn print_layer_times(circuit: &Circuit, params: &FheParams, layer_secs: &[(usize, f64)]) {
    println!(
        "{:<12} {:>10} {:>11} {:>12} {:>9}",
        "layer", "bootstraps", "measured s", "estimated s", "ratio"
    );
    for &(i, secs) in layer_secs {
        if let Layer::Requant(r) = &circuit.layers[i] {
            let estimate = r.estimated_seconds(params);
            println!(
                "{:<12} {:>10} {:>11.1} {:>12.1} {:>9.2}",
                r.name,
                r.bootstraps(),
                secs,
                estimate,
                secs / estimate
            );
        }
    }
}
