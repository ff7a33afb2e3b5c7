"""Train tiny-pkn on Fashion-MNIST and export it in pkn's safetensors model format.

tiny-pkn: conv3x3(1->4, s2, p1) -> PKN -> BN -> conv3x3(4->8, s2, p1) -> PKN -> BN -> flatten -> linear(392->10).
A PKN activation is (cp + z)^2 with one learnable scalar cp per layer (PolyKervNets, Kerv2d).
Training sees the same input quantization as pkn (pixels rounded to `input_bits`) fake-quantized weights
and activations, and the pre-activation binned as pkn's exact truncation bins it (straight-through gradients), so the integer circuit pkn compiles loses little accuracy.

Usage: python train/train_tiny.py [--epochs 15] [--out weights/tiny-pkn.safetensors]
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

DATA = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def quantize_pixels(x_u8, bits):
    """Pixels in [0, 255] -> round(p / 255 * (2^bits - 1)) / (2^bits - 1), as pkn's client does."""
    levels = (1 << bits) - 1
    return torch.round(x_u8.float() / 255.0 * levels) / levels


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def fake_quant_weight(w, bits):
    """Symmetric per-output-channel quantization, as pkn's compiler does."""
    qmax = (1 << (bits - 1)) - 1
    dims = tuple(range(1, w.dim()))
    scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp(min=1e-8) / qmax
    return torch.clamp(RoundSTE.apply(w / scale), -qmax, qmax) * scale


class FakeQuantAct(nn.Module):
    """Asymmetric activation quantization with running min/max (EMA), as pkn calibrates."""

    def __init__(self, bits):
        super().__init__()
        self.bits = bits
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(0))

    def forward(self, x):
        if self.training:
            lo, hi = x.detach().min(), x.detach().max()
            if self.seen == 0:
                self.lo.copy_(lo)
                self.hi.copy_(hi)
            else:
                self.lo.mul_(0.99).add_(0.01 * lo)
                self.hi.mul_(0.99).add_(0.01 * hi)
            self.seen += 1
        levels = (1 << self.bits) - 1
        scale = ((self.hi - self.lo) / levels).clamp(min=1e-8)
        zp = torch.round(-self.lo / scale)
        q = torch.clamp(RoundSTE.apply(x / scale) + zp, 0, levels)
        return (q - zp) * scale


class FakeTruncate(nn.Module):
    """Per-channel binning of the pre-activation into 2^bits bins over its (EMA) range widened by
    `margin`, values at bin centres: what pkn's exact truncation + table does to an accumulator."""

    def __init__(self, channels, bits, margin=0.25):
        super().__init__()
        self.bins, self.margin = 1 << bits, margin
        self.register_buffer("lo", torch.zeros(channels))
        self.register_buffer("hi", torch.zeros(channels))
        self.register_buffer("seen", torch.tensor(0))

    def forward(self, z):
        dims = [0] + list(range(2, z.dim()))
        if self.training:
            lo, hi = z.detach().amin(dim=dims), z.detach().amax(dim=dims)
            if self.seen == 0:
                self.lo.copy_(lo)
                self.hi.copy_(hi)
            else:
                self.lo.mul_(0.99).add_(0.01 * lo)
                self.hi.mul_(0.99).add_(0.01 * hi)
            self.seen += 1
        shape = [1, -1] + [1] * (z.dim() - 2)
        centre = ((self.lo + self.hi) / 2).view(shape)
        width = ((self.hi - self.lo) * (1 + self.margin)).clamp(min=1e-6).view(shape)
        step = width / self.bins
        t = torch.clamp(torch.floor((z - centre + width / 2) / step), 0, self.bins - 1)
        zq = centre - width / 2 + (t + 0.5) * step
        return z + (zq - z).detach()


class PKN(nn.Module):
    """Polynomial kervolution non-linearity (cp + z)^2, cp one learnable scalar."""

    def __init__(self):
        super().__init__()
        self.cp = nn.Parameter(torch.tensor(1.0))

    def forward(self, z):
        return (self.cp + z) ** 2


class QConv(nn.Conv2d):
    def __init__(self, *args, weight_bits=4, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits = weight_bits

    def forward(self, x):
        return F.conv2d(x, fake_quant_weight(self.weight, self.weight_bits), self.bias, self.stride, self.padding)


class QLinear(nn.Linear):
    def __init__(self, *args, weight_bits=4, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits = weight_bits

    def forward(self, x):
        w = self.weight
        qmax = (1 << (self.weight_bits - 1)) - 1
        scale = w.detach().abs().max().clamp(min=1e-8) / qmax
        return F.linear(x, torch.clamp(RoundSTE.apply(w / scale), -qmax, qmax) * scale, self.bias)


class TinyPKN(nn.Module):
    def __init__(self, weight_bits, act_bits, lut_bits):
        super().__init__()
        self.conv1 = QConv(1, 4, 3, stride=2, padding=1, weight_bits=weight_bits)
        self.t1 = FakeTruncate(4, lut_bits)
        self.act1 = PKN()
        self.bn1 = nn.BatchNorm2d(4)
        self.q1 = FakeQuantAct(act_bits)
        self.conv2 = QConv(4, 8, 3, stride=2, padding=1, weight_bits=weight_bits)
        self.t2 = FakeTruncate(8, lut_bits)
        self.act2 = PKN()
        self.bn2 = nn.BatchNorm2d(8)
        self.q2 = FakeQuantAct(act_bits)
        self.fc = QLinear(392, 10, weight_bits=weight_bits)

    def forward(self, x):
        x = self.q1(self.bn1(self.act1(self.t1(self.conv1(x)))))
        x = self.q2(self.bn2(self.act2(self.t2(self.conv2(x)))))
        return self.fc(torch.flatten(x, 1))


def architecture(weight_bits, act_bits, input_bits):
    return {
        "name": "tiny-pkn",
        "input": [1, 28, 28],
        "classes": CLASSES,
        "quantization": {"input_bits": input_bits, "weight_bits": weight_bits, "activation_bits": act_bits},
        "layers": [
            {"op": "conv2d", "name": "conv1", "in_channels": 1, "out_channels": 4, "kernel": 3, "stride": 2, "padding": 1},
            {"op": "pkn", "name": "act1"},
            {"op": "batch_norm", "name": "bn1", "eps": 1e-5},
            {"op": "conv2d", "name": "conv2", "in_channels": 4, "out_channels": 8, "kernel": 3, "stride": 2, "padding": 1},
            {"op": "pkn", "name": "act2"},
            {"op": "batch_norm", "name": "bn2", "eps": 1e-5},
            {"op": "flatten"},
            {"op": "dense", "name": "fc", "in_features": 392, "out_features": 10},
        ],
    }


def evaluate(model, x, y, bits):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            out = model(quantize_pixels(x[i:i + 1000], bits).unsqueeze(1))
            correct += (out.argmax(1) == y[i:i + 1000]).sum().item()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--input-bits", type=int, default=4)
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--lut-bits", type=int, default=4, help="bits read by pkn's tables (bins of the pre-activation)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="weights/tiny-pkn.safetensors")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    xtr = torch.from_numpy(read_idx(f"{DATA}/train-images-idx3-ubyte.gz").copy())
    ytr = torch.from_numpy(read_idx(f"{DATA}/train-labels-idx1-ubyte.gz").astype(np.int64))
    xte = torch.from_numpy(read_idx(f"{DATA}/t10k-images-idx3-ubyte.gz").copy())
    yte = torch.from_numpy(read_idx(f"{DATA}/t10k-labels-idx1-ubyte.gz").astype(np.int64))

    model = TinyPKN(a.weight_bits, a.act_bits, a.lut_bits)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs)
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(quantize_pixels(xtr[idx], a.input_bits).unsqueeze(1)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # PKN training is prone to blow-ups
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy (fake-quantized float) "
              f"{evaluate(model, xte, yte, a.input_bits):.4f}", flush=True)

    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
          if not k.startswith(("q", "t")) and not k.endswith("num_batches_tracked")}
    meta = {"format": "pkn-model", "version": "1",
            "architecture": json.dumps(architecture(a.weight_bits, a.act_bits, a.input_bits))}
    save_file(sd, a.out, metadata=meta)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
