use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;

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

/// The processes sharing this inference: the ranks of an MPI job (a job of one without `mpirun`).
#[cfg(feature = "mpi")]
fn join_processes() -> anyhow::Result<Box<dyn fhe::Processes>> {
    Ok(Box::new(crate::eval::mpi::MpiRanks::init()?))
}

#[cfg(not(feature = "mpi"))]
fn join_processes() -> anyhow::Result<Box<dyn fhe::Processes>> {
    Ok(Box::new(fhe::SingleProcess))
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
    let processes = join_processes()?;
    match encrypted(&a, &circuit, processes.as_ref()) {
        // The other processes wait for this one in an exchange: end them all, before process 0
        // writes anything.
        // The message goes out in one write, so that another process's output (or MPI's abort
        // notice) cannot land inside it.
        Err(err) if processes.count() > 1 => {
            let message = format!(
                "error on process {} of {}: {err:#}\n",
                processes.rank(),
                processes.count()
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), message.as_bytes());
            processes.abort()
        }
        done => done,
    }
}

/// The server key, checked against the circuit: every process loads it.
fn load_server_key(a: &Args, circuit: &Circuit, params: &FheParams) -> anyhow::Result<(Ids, ServerKey)> {
    let (key_ids, server_key): (Ids, ServerKey) = container::read(&a.server_key, Kind::ServerKey)?;
    if server_key.params != *params {
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
    Ok((key_ids, server_key))
}

/// Every process must have compiled the same circuit and loaded the same key as process 0, or the
/// slices they exchange would not fit together: a machine with other weights or another key is
/// refused before any work.
fn check_same_circuit_and_key(processes: &dyn fhe::Processes, circuit: &Circuit, key_ids: Ids) -> anyhow::Result<()> {
    if processes.count() == 1 {
        return Ok(());
    }
    let mine = [circuit.id(), key_ids.key].concat();
    let root = processes.broadcast((processes.rank() == 0).then(|| mine.clone()));
    if root != mine {
        anyhow::bail!(
            "this process has circuit {} and key {}, process 0 has circuit {} and key {}; every process needs \
             the same model, compile options and server key",
            hex(&mine[..16]),
            hex(&mine[16..]),
            hex(&root[..16.min(root.len())]),
            hex(&root[16.min(root.len())..])
        );
    }
    Ok(())
}

/// What process 0 alone reads and holds: the encrypted input, checked against the model and the
/// key, and the checkpoints of the output, resumed from when they fit.
fn open_run(
    a: &Args,
    circuit: &Circuit,
    params: &FheParams,
    key_ids: Ids,
) -> anyhow::Result<(Ids, Checkpointing, fhe::EncryptedState)> {
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
    if key_ids.key != input_ids.key {
        anyhow::bail!(
            "{} was encrypted under key {}, but {} is key {}",
            a.input.display(),
            hex(&input_ids.key),
            a.server_key.display(),
            hex(&key_ids.key)
        );
    }
    let ciphertexts = input
        .into_ciphertexts(params, circuit.input.shape.len())
        .with_context(|| format!("{} is not a usable encrypted input", a.input.display()))?;
    let ids = Ids {
        key: key_ids.key,
        model: model_id,
    };
    let checkpoints = Checkpointing::acquire(&a.output, ids, file_digest(&a.input)?)?;
    let lwe_size = params.big_lwe_dimension() + 1;
    let state = match checkpoints.load(|state: &fhe::EncryptedState| state.fits_circuit(circuit, lwe_size)) {
        Resume::From(state) => state,
        Resume::Fresh(reason) => {
            if let Some(reason) = reason {
                eprintln!("starting afresh: {reason}");
            }
            fhe::EncryptedState::start(circuit, ciphertexts)
        }
    };
    Ok((ids, checkpoints, state))
}

/// The encrypted inference, this process's share of it.
fn encrypted(a: &Args, circuit: &Circuit, processes: &dyn fhe::Processes) -> anyhow::Result<()> {
    let ranks = processes.count();
    if a.gpu && ranks > 1 {
        anyhow::bail!("--gpu runs in a single process; start pkn infer --gpu without mpirun");
    }
    let params = circuit.fhe_params()?;
    processes.check_circuit(circuit, params.big_lwe_dimension() + 1)?;
    let (key_ids, server_key) = load_server_key(a, circuit, &params)?;
    check_same_circuit_and_key(processes, circuit, key_ids)?;
    let opened = match processes.rank() {
        0 => Some(open_run(a, circuit, &params, key_ids)?),
        _ => None,
    };
    let (opened, state) = match opened {
        Some((ids, checkpoints, state)) => (Some((ids, checkpoints)), Some(state)),
        None => (None, None),
    };
    let state = fhe::share_state(processes, state)?;
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
    let done = fhe::bootstraps_before(circuit, state.next_layer, &fhe::SingleProcess);
    let bar = match &opened {
        Some((_, checkpoints)) => {
            if state.next_layer > 0 {
                println!(
                    "resuming from {} after layer {} of {} ({done} of {pbs} bootstraps done)",
                    checkpoints.path().display(),
                    state.next_layer,
                    circuit.layers.len()
                );
            }
            let mine = |layer| fhe::bootstraps_before(circuit, layer, processes);
            let share = if ranks > 1 {
                format!(", process 0's share of {ranks}")
            } else {
                String::new()
            };
            let bar = bootstrap_bar(mine(circuit.layers.len()), format!("inferring {}{share}", circuit.name));
            bar.set_position(mine(state.next_layer));
            bar.reset_eta();
            bar
        }
        None => ProgressBar::hidden(),
    };
    let run_start = Instant::now();
    let mut layers = Vec::new();
    let mut since = (Instant::now(), processes.exchanged());
    let outputs = fhe::resume(circuit, engine.as_ref(), processes, state, Some(&bar), |s| {
        layers.push(LayerRun {
            index: s.next_layer - 1,
            seconds: since.0.elapsed().as_secs_f64(),
            exchanged: processes.exchanged().since(since.1),
        });
        let saved = match &opened {
            Some((_, checkpoints)) => checkpoints.save(s),
            None => Ok(()),
        };
        since = (Instant::now(), processes.exchanged());
        saved
    })?;
    bar.finish_and_clear();
    let Some((ids, checkpoints)) = opened else {
        return Ok(());
    };
    let secs = run_start.elapsed().as_secs_f64();
    let run_pbs = pbs - done;
    let payload = EncryptedOutput {
        output: circuit.output.clone(),
        ciphertexts: outputs,
    };
    container::write(&a.output, Kind::OutputCiphertext, ids, &payload, false)?;
    checkpoints.finish()?;
    let over = if ranks > 1 {
        format!(" over {ranks} processes")
    } else {
        String::new()
    };
    println!(
        "{}: {pbs} bootstraps ({trunc} for exact truncation); {run_pbs} run{over} in {secs:.1} s ({:.2} ms each, \
         key loaded in {:.1} s); encrypted result in {}",
        circuit.name,
        secs * 1000.0 / run_pbs.max(1) as f64,
        key_time.as_secs_f64(),
        a.output.display()
    );
    if ranks > 1 {
        let exchanged = processes.exchanged();
        println!(
            "exchanges: process 0 sent {:.1} MiB in {:.2} s ({:.1} % of the run), and waited {:.2} s for slower processes",
            exchanged.bytes_sent as f64 / MIB,
            exchanged.transfer_seconds,
            100.0 * exchanged.transfer_seconds / secs,
            exchanged.waiting_seconds
        );
    }
    print_layer_times(circuit, &params, &layers, ranks > 1);
    Ok(())
}

const MIB: f64 = (1u64 << 20) as f64;

/// One table layer's run (its linear layers included, its checkpoint excluded), as process 0 saw
/// it.
struct LayerRun {
    index: usize,
    seconds: f64,
    exchanged: fhe::Exchanged,
}

/// Measured seconds of each table layer run next to the cost model's estimate for 2 CPU cores,
/// which `pkn inspect` prints; with several processes, what process 0 exchanged in it.
fn print_layer_times(circuit: &Circuit, params: &FheParams, layers: &[LayerRun], exchanges: bool) {
    let exchange_header = if exchanges {
        format!(" {:>9} {:>10} {:>9}", "sent MiB", "transfer s", "waited s")
    } else {
        String::new()
    };
    println!(
        "{:<12} {:>10} {:>11} {:>12} {:>9}{exchange_header}",
        "layer", "bootstraps", "measured s", "estimated s", "ratio"
    );
    for run in layers {
        if let Layer::Requant(r) = &circuit.layers[run.index] {
            let estimate = r.estimated_seconds(params);
            let exchange = if exchanges {
                let e = run.exchanged;
                format!(
                    " {:>9.1} {:>10.2} {:>9.2}",
                    e.bytes_sent as f64 / MIB,
                    e.transfer_seconds,
                    e.waiting_seconds
                )
            } else {
                String::new()
            };
            println!(
                "{:<12} {:>10} {:>11.1} {:>12.1} {:>9.2}{exchange}",
                r.name,
                r.bootstraps(),
                run.seconds,
                estimate,
                run.seconds / estimate
            );
        }
    }
}
