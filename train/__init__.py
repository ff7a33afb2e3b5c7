"""pkn-train: training of pkn's model zoo with pkn's integer circuit in the loop (docs/training.md).

Modules: `architectures` (the zoo in pkn's model format), `pknq` (the integer circuit emulated in
PyTorch), `train` (training and export), `check_circuit` (the emulation against `pkn infer
--clear`), `import_pkr18` and `pkr18` (PKR-18 checkpoints). Run them from the repository root as
`python -m train.MODULE`; they read the repository's weights/calibration-images.idx.
"""
