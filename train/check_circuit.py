"""Check that the PyTorch emulation (pknq.py) computes the same integers as pkn's clear evaluator.

    python -m train.check_circuit weights/tiny-pkn.safetensors --images 20
    python -m train.check_circuit --random-residual /tmp/tiny-res.safetensors

(`python train/check_circuit.py ...` is the same; `make check-emulation` runs the shipped checks.)

Loads a pkn model (or first writes a small residual PKN with random weights and batch-norm
statistics), calibrates the emulation on pkn's calibration images, and compares its integer output
scores on the first test images with `pkn infer --clear` on the same images, score for score.
Exits with status 1 on any difference.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file, not with -m: import the package from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from train.architectures import conv, fashion_mnist_model, pkn_bn, quantization
from train.pknq import QNet
from train.train import DATA, HERE, find_idx, load_model, read_idx, save_safetensors


def write_png(path, pixels):
    """An 8-bit grayscale PNG."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def residual_arch():
    """Stem, an identity block, a downsampling block with a 1x1 kervolution shortcut, classifier."""
    layers = [
        conv("stem", 1, 4, 3, 2, 1), *pkn_bn("stem_act", "stem_bn"),
        conv("b1c1", 4, 4, 3, 1, 1), *pkn_bn("b1act", "b1bn1"),
        conv("b1c2", 4, 4, 3, 1, 1), {"op": "batch_norm", "name": "b1bn2"},
        {"op": "add", "name": "b1", "from": "stem_bn"},
        conv("b2c1", 4, 8, 3, 2, 1), *pkn_bn("b2act", "b2bn1"),
        conv("b2c2", 8, 8, 3, 1, 1), {"op": "batch_norm", "name": "b2bn2"},
        {"op": "add", "name": "b2", "from": "b1",
         "shortcut": [conv("b2sc", 4, 8, 1, 2, 0), *pkn_bn("b2scact", "b2scbn")]},
        {"op": "avg_pool", "kernel": 7}, {"op": "flatten"},
        {"op": "dense", "name": "fc", "in_features": 8, "out_features": 10},
    ]
    return fashion_mnist_model("tiny-res", quantization(4, 4, 4, 0.25, 0.001), layers)


def write_random_residual(path, seed=0):
    torch.manual_seed(seed)
    arch = residual_arch()
    net = QNet(arch)
    for m in net.names.values():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = 1 + 0.3 * torch.randn(c)
            m.bias.data = 0.2 * torch.randn(c)
            m.running_mean = 0.5 * torch.randn(c)
            m.running_var = 0.5 + torch.rand(c)
    save_safetensors(net.state_dict_for_pkn(), path,
                     {"format": "pkn-model", "version": "1", "architecture": json.dumps(arch)})




def pkn_scores(pkn, model, png):
    out = subprocess.run([pkn, "infer", "--model", model, "--clear", png], capture_output=True, text=True,
                         check=True).stdout
    lines = out.split("scores")[1].splitlines()[1:]
    return [int(re.split(r"\s{2,}", l.strip())[1]) for l in lines if l.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?")
    p.add_argument("--random-residual", metavar="PATH", help="write a random residual model here and check it")
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--data", default=DATA)
    p.add_argument("--pkn", default=os.path.join(HERE, "..", "target", "release", "pkn"))
    a = p.parse_args()
    model = a.model
    if a.random_residual:
        write_random_residual(a.random_residual)
        model = a.random_residual
    if not model:
        p.error("give a model or --random-residual PATH")
    net = load_model(model).double()
    calib = torch.tensor(read_idx(os.path.join(HERE, "..", "weights", "calibration-images.idx")).copy())
    net.calibrate(calib)
    test = read_idx(find_idx(a.data, "t10k-images-idx3-ubyte"))[:a.images]
    out_layer = [q for q in net.qlinears if q.output][0]
    with torch.no_grad():
        net(torch.tensor(test.copy()))
    ours = out_layer.last_scores.round().long().tolist()
    mismatches = 0
    with tempfile.TemporaryDirectory() as d:
        for i, img in enumerate(test):
            png = os.path.join(d, f"{i}.png")
            write_png(png, img)
            theirs = pkn_scores(a.pkn, model, png)
            if theirs != ours[i]:
                mismatches += 1
                print(f"image {i}: pkn {theirs} vs emulation {ours[i]}")
    print(f"{model}: {len(test) - mismatches} of {len(test)} images give identical integer scores")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
