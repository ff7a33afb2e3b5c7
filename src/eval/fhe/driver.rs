//! The circuit driver: walks the layers on ciphertexts, from the start or from a checkpointed
//! state, with any bootstrapping backend.

use indicatif::ProgressBar;

use super::linear::linear;
use super::primitives::Engine;
use super::processes::{own_slice, Processes, SingleProcess};
use super::rounds::{Bootstrapper, DeferredAdd};
use super::Ciphertexts;
use crate::circuit::{Circuit, Layer};
use crate::eval::Tensors;
use crate::keys::EvaluationKey;

/// Where an evaluation stands between layers; what a checkpoint stores to resume from.
pub type EncryptedState = Tensors<Ciphertexts>;

impl EncryptedState {
    /// Whether a saved state holds exactly the tensors `circuit` holds before its next layer,
    /// each ciphertext of `lwe_size` words (compared before anything is computed from them).
    pub fn fits_circuit(&self, circuit: &Circuit, lwe_size: usize) -> Result<(), String> {
        let next = self.next_layer;
        let mismatch = || Err(format!("does not match the circuit's layer {next}"));
        if next > circuit.layers.len() || self.slots.len() != circuit.layers.len() + 1 {
            return mismatch();
        }
        let last_uses = circuit.last_uses();
        let every_tensor_fits = self.slots.iter().enumerate().all(|(t, slot)| {
            let live = t <= next && last_uses[t] >= next;
            match slot {
                None => !live,
                Some(cts) => {
                    live && cts.lwe_size().0 == lwe_size
                        && cts.ciphertext_modulus().is_native_modulus()
                        && circuit.tensor_shape(t).and_then(|s| s.len().checked_mul(lwe_size))
                            == Some(cts.as_ref().len())
                }
            }
        });
        if every_tensor_fits {
            Ok(())
        } else {
            mismatch()
        }
    }
}

/// Run the layers from `state.next_layer` to the end, this process's slice of each layer shared
/// with the other `processes`; `after_requant` sees the state after each requant layer (the
/// expensive ones), for example to checkpoint it. Returns the encrypted outputs.
pub fn resume<E>(
    circuit: &Circuit,
    engine: &dyn Bootstrapper,
    processes: &dyn Processes,
    mut state: EncryptedState,
    progress: Option<&ProgressBar>,
    mut after_requant: impl FnMut(&EncryptedState) -> Result<(), E>,
) -> Result<Ciphertexts, E> {
    let last_uses = circuit.last_uses();
    let enc = circuit.tensor_encodings();
    let deferred = circuit.deferred_residuals();
    while state.next_layer < circuit.layers.len() {
        let i = state.next_layer;
        let gathered = gathered_after(circuit, &last_uses, i);
        state.step(circuit, &last_uses, |layer, x, held| {
            let len = layer.output_shape().len();
            let mine = processes.slice(len);
            let out = match layer {
                Layer::Linear(l) => {
                    let residual = match deferred[i] {
                        Some(_) => None,
                        None => l.residual.as_ref().map(|r| (held.get(r.from), enc[r.from])),
                    };
                    linear(l, &x, enc[l.input], residual, enc[i + 1], mine.clone())
                }
                Layer::Requant(r) => {
                    let add = i
                        .checked_sub(1)
                        .and_then(|linear| deferred[linear])
                        .map(|res| DeferredAdd::new(res, r, held.get(res.from), enc[res.from]));
                    engine.requant(r, own_slice(x, &mine), mine.start, add.as_ref(), progress)
                }
            };
            if gathered {
                processes.gather(out, len)
            } else {
                out
            }
        });
        if matches!(circuit.layers[i], Layer::Requant(_)) {
            after_requant(&state)?;
        }
    }
    Ok(state.output())
}

/// Whether the processes gather layer `layer`'s output from their slices (`last_uses` is the
/// circuit's). A linear output read only by the requant after it stays sliced: the requant needs
/// no other process's part of it, so the layer pair costs one exchange.
pub fn gathered_after(circuit: &Circuit, last_uses: &[usize], layer: usize) -> bool {
    let feeds_only_its_requant =
        matches!(circuit.layers.get(layer + 1), Some(Layer::Requant(_))) && last_uses[layer + 1] == layer + 1;
    matches!(circuit.layers[layer], Layer::Requant(_)) || !feeds_only_its_requant
}

/// Bootstraps this process runs in the layers before `layer`: all of them when it runs alone.
pub fn bootstraps_before(circuit: &Circuit, layer: usize, processes: &dyn Processes) -> u64 {
    circuit.layers[..layer.min(circuit.layers.len())]
        .iter()
        .map(|l| match l {
            Layer::Requant(r) => r.pbs_per_activation() * processes.slice(r.shape.len()).len() as u64,
            Layer::Linear(_) => 0,
        })
        .sum()
}

/// Run the whole circuit on encrypted inputs on the CPU; returns the encrypted outputs.
pub fn run(circuit: &Circuit, key: &EvaluationKey, input: Ciphertexts, progress: Option<&ProgressBar>) -> Ciphertexts {
    run_on(circuit, &Engine::new(key), input, progress)
}

/// Run the whole circuit on encrypted inputs with `engine`'s bootstraps, without checkpoints.
pub fn run_on(
    circuit: &Circuit,
    engine: &dyn Bootstrapper,
    input: Ciphertexts,
    progress: Option<&ProgressBar>,
) -> Ciphertexts {
    let done: Result<_, std::convert::Infallible> = resume(
        circuit,
        engine,
        &SingleProcess,
        EncryptedState::start(circuit, input),
        progress,
        |_| Ok(()),
    );
    match done {
        Ok(out) => out,
        Err(never) => match never {},
    }
}
