"""Convert a PKR-18 checkpoint (tolusophy/PolyKervNets, Models/PKR18.py) to a pkn model.

    python -m train.import_pkr18 pkr18.pt pkr18.safetensors [--input 3,32,32]

The checkpoint is a state_dict (or a dict holding one under "state_dict", "model" or "net"; a
DataParallel "module." prefix is dropped). PKR-18's forward skips stage 4 and pools stage 3's output
4x4 into fc (1024 inputs on 32x32 images): the pkn model reproduces that forward, so stage 4's
weights are left out. Tensor names stay PKR-18's (docs/model-format.md allows any names).
"""
import argparse
import json
import os
import sys

import torch

if __package__ in (None, ""):  # run as a file, not with -m: import the package from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from train.architectures import CLASSES, pkr_stages, pkr_stem, quantization
from train.train import save_safetensors


def unwrap(checkpoint):
    for key in ("state_dict", "model", "net"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def convert(state, input_shape, q, classes=CLASSES):
    """(tensors, architecture) of the pkn model computing PKR-18's forward."""
    c, h, w = input_shape
    if state["conv1.weight"].shape[1] != c:
        raise ValueError(f"conv1 takes {state['conv1.weight'].shape[1]} channels, --input says {c}")
    stages, _ = pkr_stages(64, [(64, 1), (128, 2), (256, 2)])
    side = h
    for _ in range(2):
        side = (side + 2 - 3) // 2 + 1
    features = 256 * (side // 4) * (side // 4)
    fc_in = state["fc.weight"].shape[1]
    if features != fc_in:
        raise ValueError(f"stage 3 pooled 4x4 gives {features} features on {h}x{w} inputs, fc takes {fc_in}")
    arch = {"name": "pkr18-import", "input": [c, h, w], "classes": classes[:state["fc.weight"].shape[0]],
            "quantization": q,
            "layers": [*pkr_stem(c), *stages, {"op": "avg_pool", "kernel": 4}, {"op": "flatten"},
                       {"op": "dense", "name": "fc", "in_features": fc_in, "out_features": state["fc.weight"].shape[0]}]}
    wanted = dict(layer_tensors(arch["layers"]))
    tensors = {k: v.float() for k, v in state.items() if k in wanted}
    missing = sorted(k for k, required in wanted.items() if required and k not in tensors)
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[:5]}")
    return tensors, arch


def layer_tensors(layers):
    """(tensor name, required) for every tensor the layers read; conv and dense biases are optional."""
    for l in layers:
        if l["op"] in ("conv2d", "dense"):
            yield from ((f"{l['name']}.weight", True), (f"{l['name']}.bias", False))
        elif l["op"] == "pkn":
            yield f"{l['name']}.cp", True
        elif l["op"] == "batch_norm":
            yield from ((f"{l['name']}.{k}", True) for k in ("weight", "bias", "running_mean", "running_var"))
        elif l["op"] == "add":
            yield from layer_tensors(l.get("shortcut", []))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--input", default="3,32,32", help="channels,height,width of the images")
    p.add_argument("--bits", default="4,4,4", help="input,weight,activation bits")
    a = p.parse_args()
    state = unwrap(torch.load(a.checkpoint, map_location="cpu", weights_only=True))
    bits = [int(b) for b in a.bits.split(",")]
    tensors, arch = convert(state, [int(d) for d in a.input.split(",")], quantization(*bits, 0.25, 0.001))
    save_safetensors(tensors, a.out, {"format": "pkn-model", "version": "1", "architecture": json.dumps(arch)})
    print(f"wrote {a.out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values()):,} parameters")


if __name__ == "__main__":
    main()
