//! A checkpoint is resumed only if the evaluator's state it holds fits the circuit at its layer:
//! every live tensor present with its size, nothing else, sizes checked before any use.

mod common;

use std::path::Path;

use pkn::circuit::Circuit;
use pkn::eval::fhe::EncryptedState;
use pkn::io::checkpoint::{resume_from_bytes, Expected, Resume};
use pkn::io::container::{self, Ids, Kind};
use tfhe::core_crypto::prelude::{CiphertextModulus, LweCiphertextList, LweSize};

const IDS: Ids = Ids {
    key: [3; 16],
    model: [4; 16],
};

/// The bytes of a checkpoint file for `IDS` and a zero input digest, at layer `next_layer` with
/// tensors `live` (index, values), each ciphertext of `lwe_size`. The payload is the input digest
/// followed by the state, which is how the checkpoint's payload struct serialises.
fn checkpoint_bytes(circuit: &Circuit, next_layer: usize, live: &[(usize, usize)], lwe_size: usize) -> Vec<u8> {
    let mut slots: Vec<_> = (0..=circuit.layers.len()).map(|_| None).collect();
    for &(t, values) in live {
        slots[t] = Some(LweCiphertextList::from_container(
            vec![0u64; values * lwe_size],
            LweSize(lwe_size),
            CiphertextModulus::new_native(),
        ));
    }
    let state = EncryptedState { next_layer, slots };
    container::frame(Kind::Checkpoint, IDS, &bincode::serialize(&([0u8; 32], state)).unwrap())
}

#[test]
fn a_checkpoint_is_resumed_only_if_it_fits_the_circuit_at_its_layer() {
    let circuit = common::tiny_pkn();
    let expected = Expected {
        ids: IDS,
        input_digest: [0; 32],
    };
    let path = Path::new("out.ct.ckpt");
    let end = circuit.layers.len();
    let outputs = circuit.tensor_shape(end).unwrap().len();
    let judged = |bytes: &[u8]| match resume_from_bytes(path, bytes, &expected, |s: &EncryptedState| {
        s.fits_circuit(&circuit, 3)
    }) {
        Resume::From(state) => Ok(state.next_layer),
        Resume::Fresh(reason) => Err(reason.unwrap()),
    };
    assert_eq!(judged(&checkpoint_bytes(&circuit, end, &[(end, outputs)], 3)), Ok(end));
    for bad in [
        checkpoint_bytes(&circuit, end, &[(end, outputs + 1)], 3),
        checkpoint_bytes(&circuit, end, &[(end, outputs)], 4),
        checkpoint_bytes(&circuit, end, &[(0, circuit.input.shape.len()), (end, outputs)], 3),
        checkpoint_bytes(&circuit, end, &[], 3),
        checkpoint_bytes(&circuit, end + 1, &[(end, outputs)], 3),
    ] {
        assert!(judged(&bad).unwrap_err().contains("does not match"));
    }
    // A ciphertext size of 0 (its count would divide by it) is refused, not a panic.
    let mut zero_size = checkpoint_bytes(&circuit, end, &[(end, 0)], 3);
    let lwe_size_at = zero_size.len()
        - 8
        - bincode::serialize(&CiphertextModulus::<u64>::new_native())
            .unwrap()
            .len();
    zero_size[lwe_size_at..lwe_size_at + 8].fill(0);
    let body = zero_size[container::HEADER_LEN..].to_vec();
    let reframed = container::frame(Kind::Checkpoint, IDS, &body);
    assert!(judged(&reframed).unwrap_err().contains("does not match"));
}
