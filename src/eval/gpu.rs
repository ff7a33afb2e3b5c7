//! The bootstraps of each requant layer on an NVIDIA GPU, with tfhe's CUDA backend (feature `gpu`).
//!
//! The same computation as the CPU [`Engine`](super::fhe::Engine): the same keys and
//! decompositions (classical bootstraps with the precise and the cheap key), keyswitch to the
//! small key, the centred modulus switch (the backend's `Centered` mode ports tfhe's
//! `lwe_ciphertext_centered_binary_modulus_switch`), and the tables of [`LayerLuts`]. Each round of
//! bootstraps runs on all ciphertexts of the layer at once: one upload of their big-key inputs, a
//! batched keyswitch whose small-key outputs stay on the device, a batched bootstrap with a table
//! index per ciphertext, one download. The plaintext shifts and subtractions between rounds run on
//! the CPU, since tfhe 1.8.2's `core_crypto::gpu` offers no LWE addition or scalar product; keys,
//! tables and index vectors are uploaded per round (keys once per run). The rounds themselves are
//! the CPU engine's ([`requant_rounds`]), run on the whole layer at once.

use indicatif::ProgressBar;
use tfhe::core_crypto::gpu::entities::glwe_ciphertext_list::CudaGlweCiphertextList;
use tfhe::core_crypto::gpu::entities::lwe_bootstrap_key::{
    CudaLweBootstrapKey, CudaModulusSwitchNoiseReductionConfiguration,
};
use tfhe::core_crypto::gpu::entities::lwe_ciphertext_list::CudaLweCiphertextList;
use tfhe::core_crypto::gpu::entities::lwe_keyswitch_key::CudaLweKeyswitchKey;
use tfhe::core_crypto::gpu::vec::{CudaVec, GpuIndex};
use tfhe::core_crypto::gpu::{
    cuda_keyswitch_lwe_ciphertext, cuda_programmable_bootstrap_lwe_ciphertext, is_cuda_available, CudaStreams,
};
use tfhe::core_crypto::prelude::*;

use super::fhe::{requant_rounds, Bootstrapper, Ciphertexts, DeferredAdd, LayerLuts, Luts};
use crate::circuit::Requant;
use crate::keys::StandardEvaluationKey;
use crate::params::{native_modulus, Bootstrap, FheParams};
use crate::{Error, Result};

/// The evaluation key on GPU 0, with the stream every call runs on.
pub struct GpuEngine {
    params: FheParams,
    streams: CudaStreams,
    keyswitch_key: CudaLweKeyswitchKey<u64>,
    /// One per [`FheParams::keys`] entry, in that order.
    bootstrap_keys: Vec<CudaLweBootstrapKey>,
}

/// Fails unless CUDA sees a GPU: the backend aborts the process on its first call otherwise.
pub fn check_gpu() -> Result<GpuIndex> {
    // is_cuda_available() is safe without a driver; GpuIndex::try_new counts the GPUs, which aborts
    // without one, so it comes second.
    if !is_cuda_available() {
        return Err(Error::Gpu(
            "no usable NVIDIA GPU: CUDA found no device (is the driver installed and a GPU visible?)".into(),
        ));
    }
    GpuIndex::try_new(0).ok_or_else(|| Error::Gpu("CUDA reports no GPU".into()))
}

impl GpuEngine {
    /// Upload the evaluation key to the first GPU (the backend converts the bootstrap keys to its
    /// Fourier layout there).
    pub fn new(key: &StandardEvaluationKey) -> Result<Self> {
        let streams = CudaStreams::new_single_gpu(check_gpu()?);
        let centred = || Some(CudaModulusSwitchNoiseReductionConfiguration::Centered);
        Ok(GpuEngine {
            params: key.params,
            keyswitch_key: CudaLweKeyswitchKey::from_lwe_keyswitch_key(&key.keyswitch_key, &streams),
            bootstrap_keys: key
                .bootstrap_keys
                .iter()
                .map(|k| CudaLweBootstrapKey::from_lwe_bootstrap_key(k, centred(), &streams))
                .collect(),
            streams,
        })
    }

    fn bootstrap_key(&self, which: Bootstrap) -> &CudaLweBootstrapKey {
        &self.bootstrap_keys[self.params.key_index(which)]
    }

    fn upload_indexes(&self, indexes: impl Iterator<Item = usize>) -> CudaVec<u64> {
        let host: Vec<u64> = indexes.map(|i| i as u64).collect();
        // SAFETY: `host` outlives the copy, which the synchronisation below completes.
        let device = unsafe { CudaVec::from_cpu_async(&host, &self.streams, 0) };
        self.streams.synchronize();
        device
    }

    fn upload_luts<'a>(
        &self,
        luts: impl IntoIterator<Item = &'a GlweCiphertextOwned<u64>>,
    ) -> CudaGlweCiphertextList<u64> {
        let luts: Vec<&GlweCiphertextOwned<u64>> = luts.into_iter().collect();
        let (glwe_size, poly) = (luts[0].glwe_size(), luts[0].polynomial_size());
        let host: Vec<u64> = luts.iter().flat_map(|l| l.as_ref().iter().copied()).collect();
        let list = GlweCiphertextList::from_container(host, glwe_size, poly, native_modulus());
        CudaGlweCiphertextList::from_glwe_ciphertext_list(&list, &self.streams)
    }

    /// Keyswitch, centred modulus switch, blind rotation and sample extraction of every big-key
    /// ciphertext in `inputs`, ciphertext j through `luts.of(j)` with key `which`.
    fn bootstrap(&self, inputs: &[u64], luts: Luts, which: Bootstrap, progress: Option<&ProgressBar>) -> Vec<u64> {
        let big = LweSize(self.params.big_lwe_dimension() + 1);
        let count = LweCiphertextCount(inputs.len() / big.0);
        let indexes = self.upload_indexes(0..count.0);
        let (tables, lut_indexes) = match luts {
            Luts::Same(lut) => (
                self.upload_luts([lut]),
                self.upload_indexes(std::iter::repeat_n(0, count.0)),
            ),
            Luts::ByChannel {
                tables,
                first,
                per_channel,
            } => (
                self.upload_luts(tables),
                self.upload_indexes((first..first + count.0).map(|i| i / per_channel)),
            ),
        };
        let input = CudaLweCiphertextList::from_lwe_ciphertext_list(
            &LweCiphertextList::from_container(inputs, big, native_modulus()),
            &self.streams,
        );
        let mut small = CudaLweCiphertextList::new(
            LweDimension(self.params.lwe_dimension),
            count,
            native_modulus(),
            &self.streams,
        );
        cuda_keyswitch_lwe_ciphertext(
            &self.keyswitch_key,
            &input,
            &mut small,
            &indexes,
            &indexes,
            true,
            &self.streams,
            false,
        );
        let mut output = CudaLweCiphertextList::new(big.to_lwe_dimension(), count, native_modulus(), &self.streams);
        cuda_programmable_bootstrap_lwe_ciphertext(
            &small,
            &mut output,
            &tables,
            &lut_indexes,
            &indexes,
            &indexes,
            self.bootstrap_key(which),
            &self.streams,
        );
        let out = output.to_lwe_ciphertext_list(&self.streams).into_container();
        if let Some(bar) = progress {
            bar.inc(count.0 as u64);
        }
        out
    }
}

impl Bootstrapper for GpuEngine {
    fn requant(
        &self,
        layer: &Requant,
        input: Ciphertexts,
        first: usize,
        residual: Option<&DeferredAdd>,
        progress: Option<&ProgressBar>,
    ) -> Ciphertexts {
        let size = input.lwe_size().0;
        let luts = LayerLuts::new(&self.params, layer);
        let mut acc = input.into_container();
        requant_rounds(layer, &luts, &mut acc, first, residual, &mut |inputs, l, which| {
            self.bootstrap(inputs, l, which, progress)
        });
        LweCiphertextList::from_container(acc, LweSize(size), native_modulus())
    }
}
