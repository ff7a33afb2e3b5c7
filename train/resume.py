"""Resumable training: a run that is stopped (a closed laptop, a lost machine) continues where it was.

After every epoch of every phase the model (parameters and the windows' buffers), the optimizer's
moments and the random state go to one file, written under a temporary name and renamed, so a run
cut off mid-write keeps the previous epoch. Starting the same command again with the same
--checkpoint loads it and skips the epochs already done; the learning-rate schedule depends only
on the epoch's index, so the resumed run trains what the uncut one would have.
"""
import os

import torch

PHASES = ("float", "phase1", "phase2")

# What the file holds and in which layout; a file of another format or version is refused.
FORMAT, VERSION = "pkn-train-checkpoint", 1

# Options that do not change what is trained: they may differ between a run and its resumption.
FREE_OPTIONS = {"checkpoint", "out", "save_float", "device", "teacher_logits"}


class Checkpoint:
    def __init__(self, path, options):
        self.path = path
        self.options = {k: v for k, v in sorted(vars(options).items()) if k not in FREE_OPTIONS}
        self.state = None
        if path and os.path.exists(path):
            try:  # weights_only: tensors and plain values, never code
                self.state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise SystemExit(f"{path} cannot be read as a {FORMAT} file ({e}): give another --checkpoint")
            kind = (self.state.get("format"), self.state.get("version")) if isinstance(self.state, dict) else None
            if kind != (FORMAT, VERSION):
                raise SystemExit(f"{path} is not a {FORMAT} file of version {VERSION}: give another --checkpoint")
            if self.state["options"] != self.options:
                differ = sorted(k for k in self.options if self.state["options"].get(k) != self.options[k])
                raise SystemExit(f"{path} was written by a run with other options ({', '.join(differ)}): "
                                 f"start it with those options, or give another --checkpoint")

    def restore(self, model):
        """Load the saved model and random state, and say where the run resumes."""
        if self.state is None:
            return
        model.load_state_dict(self.state["model"])
        torch.set_rng_state(self.state["rng"])
        if torch.cuda.is_available() and self.state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(self.state["cuda_rng"])
        print(f"resuming from {self.path}: {self.state['phase']} epoch {self.state['epochs']} done", flush=True)

    def epochs_done(self, phase, epochs):
        """How many of the `epochs` epochs of `phase` the saved run finished."""
        if self.state is None:
            return 0
        saved = PHASES.index(self.state["phase"])
        if saved > PHASES.index(phase):
            return epochs
        return self.state["epochs"] if saved == PHASES.index(phase) else 0

    def optimizer_state(self, phase):
        if self.state is None or self.state["phase"] != phase:
            return None
        return self.state["optimizer"]

    def save(self, phase, epochs, model, optimizer):
        if not self.path:
            return
        self.state = {
            "format": FORMAT, "version": VERSION, "options": self.options, "phase": phase, "epochs": epochs,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        torch.save(self.state, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)
