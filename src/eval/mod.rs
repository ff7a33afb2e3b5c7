//! Evaluators of the integer circuit: the clear reference and the encrypted one.

pub mod clear;
pub mod fhe;

use serde::{Deserialize, Serialize};

use crate::circuit::{Circuit, Layer};

/// The tensors an evaluation holds between layers: tensor 0 is the input, tensor i + 1 the output
/// of layer i, and each is dropped after the last layer that reads it. Both evaluators walk the
/// circuit with it; the FHE evaluator checkpoints it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tensors<T> {
    /// Index of the next layer to run.
    pub next_layer: usize,
    pub slots: Vec<Option<T>>,
}

impl<T: Clone> Tensors<T> {
    /// The state before the first layer.
    pub fn start(circuit: &Circuit, input: T) -> Self {
        let mut slots: Vec<Option<T>> = (0..=circuit.layers.len()).map(|_| None).collect();
        slots[0] = Some(input);
        Tensors { next_layer: 0, slots }
    }

    /// Tensor `t`, which the circuit guarantees is live while a layer reads it.
    pub fn get(&self, t: usize) -> &T {
        self.slots[t].as_ref().expect("a tensor is live until its last reader")
    }

    /// Run the next layer: `eval(layer, input, tensors)` gets the layer's first input by value
    /// (moved out when this layer is its last reader, cloned otherwise) and the other tensors.
    pub fn step(&mut self, circuit: &Circuit, last_uses: &[usize], eval: impl FnOnce(&Layer, T, &Self) -> T) {
        let i = self.next_layer;
        let layer = &circuit.layers[i];
        let inputs = layer.inputs(i);
        let first = inputs[0];
        let input = if last_uses[first] == i && !inputs[1..].contains(&first) {
            self.slots[first]
                .take()
                .expect("a tensor is live until its last reader")
        } else {
            self.get(first).clone()
        };
        let out = eval(layer, input, self);
        self.slots[i + 1] = Some(out);
        for t in inputs {
            if last_uses[t] == i {
                self.slots[t] = None;
            }
        }
        self.next_layer += 1;
    }

    /// The output tensor once every layer ran.
    pub fn output(mut self) -> T {
        self.slots.pop().flatten().expect("the circuit ran to its end")
    }
}
#[cfg(feature = "gpu")]
pub mod gpu;
#[cfg(feature = "mpi")]
pub mod mpi;
