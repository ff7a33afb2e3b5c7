"""Train a zoo model on Fashion-MNIST with pkn's integer circuit in the loop, and export it.

    python -m train.train tiny-pkn --epochs 15 --finetune 5 --margin 0.1   # train/out/tiny-pkn.safetensors

(`python train/train.py ...` is the same.) The recipes of the shipped models are the Makefile's
train-* targets (docs/training.md); the output goes to train/out/ unless --out says otherwise, so
the shipped weights/ are only replaced by copying a file there.

Phase 1 trains with moving-average windows; phase 2 calibrates on pkn's calibration images
(weights/calibration-images.idx), freezes windows and batch norm, and fine-tunes under exactly the
circuit pkn compiles; the last calibration is the one the compiler recomputes. The accuracy printed
at the end is the integer circuit's (float64 emulation), which `pkn eval` reproduces.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file, not with -m: import the package from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from train.architectures import ZOO, quantization
from train.pknq import QNet
from train.resume import Checkpoint

DATA = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))


def save_safetensors(tensors, path, metadata):
    """Write float32 tensors in the safetensors format (no dependency beyond torch)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().cpu().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    os.replace(path + ".tmp", path)


def widths(text):
    """`5` or `conv1=4,conv2=5`: a quantization width for every layer, or by layer (others 4)."""
    if "=" not in text:
        return int(text)
    return {name: int(bits) for name, bits in (part.split("=") for part in text.split(","))}


def read_safetensors(path):
    """(metadata, float64 tensors) of a safetensors file written by save_safetensors."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    tensors = {}
    for name, t in header.items():
        lo, hi = t["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64}[t["dtype"]]
        values = np.frombuffer(data[8 + n + lo:8 + n + hi], dtype=dtype).reshape(t["shape"])
        tensors[name] = torch.tensor(values.astype(np.float64))
    return meta, tensors


def load_model(path):
    """A pkn model file as a QNet: its architecture, margin and activation clip, and its tensors."""
    meta, tensors = read_safetensors(path)
    arch = json.loads(meta["architecture"])
    q = arch["quantization"]
    net = QNet(arch, margin=q.get("window_margin", 0.25), act_clip=q.get("activation_clip", 0.001))
    net.load_pkn_tensors(tensors)
    return net


def find_idx(data, stem):
    """The IDX file `stem` in the directory `data`, gzipped or not."""
    for path in (os.path.join(data, stem + ".gz"), os.path.join(data, stem)):
        if os.path.exists(path):
            return path
    raise SystemExit(f"no {stem}(.gz) in {data}: Fashion-MNIST is the Debian package dataset-fashion-mnist, "
                     "or give its directory with --data")


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def accuracy(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 2000):
            correct += (logits(model, x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum().item()
    return correct / len(x)


def logits(model, x):
    out = model(x)
    return out.reshape(out.shape[0], -1)


def augment(images_u8, shift=2):
    """Random horizontal flips and translations by up to `shift` pixels (zero fill): pixels stay
    integers in 0..255, so the quantized input is still exactly what the client encrypts."""
    n, h, w = images_u8.shape
    dev = images_u8.device
    flip = torch.rand(n, device=dev) < 0.5
    images_u8 = torch.where(flip[:, None, None], images_u8.flip(2), images_u8)
    padded = torch.nn.functional.pad(images_u8, (shift, shift, shift, shift))
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
    return padded[torch.arange(n, device=dev)[:, None, None], rows, cols]


def loss_of(out, y, soft, a):
    """Cross-entropy, mixed with the teacher's soft labels (Hinton et al.'s distillation) when `soft`
    holds the teacher's logits for the batch."""
    ce = F.cross_entropy(out, y)
    if soft is None:
        return ce
    t = a.temperature
    kd = F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(soft / t, 1), log_target=True, reduction="batchmean")
    return (1 - a.distill) * ce + a.distill * t * t * kd


def teacher_logits(a, xtr):
    """The float logits of --teacher on the training images, read from --teacher-logits if it exists
    (written there otherwise): the teacher runs once, not once per training run."""
    if a.teacher_logits and os.path.exists(a.teacher_logits):
        soft = torch.load(a.teacher_logits)
        if len(soft) != len(xtr):
            raise SystemExit(f"{a.teacher_logits} holds logits of {len(soft)} training images, not {len(xtr)}: "
                             "remove it or use the same --train-images")
        return soft.to(xtr.device)
    teacher = load_model(a.teacher)
    teacher.float().to(xtr.device)
    teacher.set_float(True)
    teacher.eval()
    out, start = [], time.time()
    with torch.no_grad():
        for i in range(0, len(xtr), 500):
            out.append(logits(teacher, xtr[i:i + 500]).float())
            print(f"  teacher: {min(i + 500, len(xtr))} / {len(xtr)} training images, {time.time() - start:.0f} s",
                  flush=True)
    soft = torch.cat(out)
    if a.teacher_logits:
        torch.save(soft.cpu(), a.teacher_logits)
    return soft


def train_epoch(model, opt, xtr, ytr, lr, frozen, a, soft=None):
    """One epoch at learning rate `lr` with the optimizer `opt` (distilled when `soft` holds the
    teacher's logits of every training image)."""
    for group in opt.param_groups:
        group["lr"] = lr
    model.train()
    model.freeze(frozen)
    perm = torch.randperm(len(xtr), device=xtr.device)
    start, skipped = time.time(), 0
    for n, i in enumerate(range(0, len(xtr), a.batch), start=1):
        idx = perm[i:i + a.batch]
        x = augment(xtr[idx]) if a.augment else xtr[idx]
        loss = loss_of(logits(model, x), ytr[idx], None if soft is None else soft[idx], a)
        if not torch.isfinite(loss):  # a polynomial blow-up: skip the batch rather than poison the weights
            skipped += 1
            continue
        if n % 100 == 0:
            print(f"  batch {n}: loss {loss.item():.4f}, {time.time() - start:.0f} s, {skipped} skipped", flush=True)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # PKN training is prone to blow-ups
        opt.step()


def train_phase(model, a, xtr, ytr, ckpt, phase, epochs, lr_of_epoch, frozen, before=None, after=None, soft=None):
    """`epochs` epochs of `phase` at learning rate `lr_of_epoch(e)`, with a fresh Adam every epoch (how
    tiny-pkn and cnn-pkn were trained), or one for the whole phase with --keep-optimizer; the epochs
    the checkpoint `ckpt` holds are skipped. `before()` runs before each epoch, `after(e)` after epoch e."""
    opt, start = None, ckpt.epochs_done(phase, epochs)
    for epoch in range(start, epochs):
        if opt is None or not a.keep_optimizer:
            opt = torch.optim.Adam(model.parameters())
            saved = ckpt.optimizer_state(phase) if epoch == start and a.keep_optimizer else None
            if saved is not None:
                opt.load_state_dict(saved)
        if before:
            before()
        train_epoch(model, opt, xtr, ytr, lr_of_epoch(epoch), frozen, a, soft)
        ckpt.save(phase, epoch + 1, model, opt)
        if after:
            after(epoch + 1)


def integer_accuracy(model, calib, xte, yte):
    """The integer circuit's accuracy as `pkn eval` reports it: calibrated and run in float64 (the
    model is left in float64)."""
    model.double()
    model.calibrate(calib.clone())
    return accuracy(model, xte, yte)


def cosine(lr, epoch, total):
    return float(lr * 0.5 * (1 + np.cos(np.pi * epoch / max(total, 1))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=sorted(ZOO))
    p.add_argument("--float-epochs", type=int, default=0, help="plain float epochs before the circuit is in the loop")
    p.add_argument("--init", help="start from this model's tensors (for example a --save-float file)")
    p.add_argument("--save-float", help="write the model here after the float epochs")
    p.add_argument("--float-lr", type=float, default=None, help="learning rate of the float epochs (default --lr)")
    p.add_argument("--epochs", type=int, default=12, help="phase 1 epochs (moving-average windows)")
    p.add_argument("--finetune", type=int, default=4, help="phase 2 epochs (calibrated, frozen windows)")
    p.add_argument("--input-bits", type=int, default=4)
    p.add_argument("--weight-bits", type=widths, default=4, help="N, or NAME=N,... per layer (others 4)")
    p.add_argument("--act-bits", type=widths, default=4,
                   help="bits of each layer's output activations: N, or NAME=N,... per layer (others 4)")
    p.add_argument("--lut-bits", type=widths, default=4,
                   help="bits each table reads: N for every layer, or NAME=N,... per layer (others 4)")
    p.add_argument("--margin", type=float, default=0.25)
    p.add_argument("--export-margin", type=float,
                   help="the window margin written into the model for the compiler (default --margin); the "
                        "final accuracy is measured with it")
    p.add_argument("--act-clip", type=float, default=0.001, help="fraction clipped at each end of activation ranges")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--stem-stride", type=int, default=1, choices=[1, 2],
                   help="resnet18-pkn: stride of the stem convolution (2: stages at 14x14 down to 2x2)")
    p.add_argument("--stage1-stride", type=int, default=1, choices=[1, 2],
                   help="resnet18-pkn: stride of stage 1's first block (2 with --stem-stride 2: stages at 7x7 down to 1x1)")
    p.add_argument("--augment", action="store_true", help="random flips and 2-pixel shifts of the training images")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--teacher", help="distil from this model file's float network (for example "
                   "weights/resnet18-pkn.safetensors) in every phase; not with --augment")
    p.add_argument("--teacher-logits", help="cache of the teacher's training-set logits (.pt): read if it exists, else written")
    p.add_argument("--distill", type=float, default=0.7, help="weight of the teacher's soft labels in the loss")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature of the distillation")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="one Adam per phase, its moments carried across epochs (default: a fresh one every epoch)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ptq-accuracy", action="store_true",
                   help="after the float epochs, print the integer circuit's accuracy of the float model as it is")
    p.add_argument("--train-images", type=int, help="train on the first N training images only (smoke tests)")
    p.add_argument("--test-images", type=int, help="measure on the first N test images only (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=None, help="where the model is written (default train/out/MODEL.safetensors)")
    p.add_argument("--checkpoint", help="save the run here after every epoch, and resume from it when it exists "
                   "(the same command again continues a stopped run)")
    a = p.parse_args()
    if a.teacher and a.augment:
        p.error("--teacher labels the training images as they are: it cannot be combined with --augment")
    torch.manual_seed(a.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    q = quantization(a.input_bits, a.weight_bits, a.act_bits, a.margin, a.act_clip, a.lut_bits)
    strides = dict(stem_stride=a.stem_stride, stage1_stride=a.stage1_stride)
    if strides != dict(stem_stride=1, stage1_stride=1) and a.model != "resnet18-pkn":
        p.error("--stem-stride and --stage1-stride apply to resnet18-pkn only")
    arch = ZOO[a.model](q, **strides) if a.model == "resnet18-pkn" else ZOO[a.model](q)
    xtr = torch.from_numpy(read_idx(find_idx(a.data, "train-images-idx3-ubyte")).copy())
    ytr = torch.from_numpy(read_idx(find_idx(a.data, "train-labels-idx1-ubyte")).astype(np.int64))
    xte = torch.from_numpy(read_idx(find_idx(a.data, "t10k-images-idx3-ubyte")).copy())
    yte = torch.from_numpy(read_idx(find_idx(a.data, "t10k-labels-idx1-ubyte")).astype(np.int64))
    calib = torch.from_numpy(read_idx(os.path.join(HERE, "..", "weights", "calibration-images.idx")).copy())
    xtr, ytr, xte, yte = xtr[:a.train_images], ytr[:a.train_images], xte[:a.test_images], yte[:a.test_images]
    xtr, ytr, xte, yte, calib = (t.to(a.device) for t in (xtr, ytr, xte, yte, calib))
    torch.backends.cudnn.benchmark = True
    soft = teacher_logits(a, xtr) if a.teacher else None
    if soft is not None:
        print(f"teacher's accuracy on the training images: {(soft.argmax(1) == ytr).float().mean().item():.4f}",
              flush=True)

    meta = {"format": "pkn-model", "version": "1", "architecture": json.dumps(arch)}
    model = QNet(arch, margin=a.margin, act_clip=a.act_clip)
    if a.init:
        model.load_pkn_tensors(read_safetensors(a.init)[1])
    model.to(a.device)
    ckpt = Checkpoint(a.checkpoint, a)
    ckpt.restore(model)
    model.set_float(True)

    def float_epoch_done(epoch):
        print(f"float epoch {epoch}: test accuracy (float network) {accuracy(model, xte, yte):.4f}", flush=True)
        if a.save_float:  # a checkpoint per epoch: long runs may be cut off
            save_safetensors(model.state_dict_for_pkn(), a.save_float, meta)

    train_phase(model, a, xtr, ytr, ckpt, "float", a.float_epochs,
                lambda e: cosine(a.float_lr or a.lr, e, a.float_epochs), False, after=float_epoch_done, soft=soft)
    model.set_float(False)
    if a.ptq_accuracy:
        print(f"post-training quantization of the float model: integer-circuit test accuracy "
              f"{integer_accuracy(model, calib, xte, yte):.4f}", flush=True)
        model.float()
    train_phase(model, a, xtr, ytr, ckpt, "phase1", a.epochs, lambda e: cosine(a.lr, e, a.epochs), False,
                after=lambda e: print(f"phase 1 epoch {e}: test accuracy (moving windows) "
                                      f"{accuracy(model, xte, yte):.4f}", flush=True), soft=soft)
    train_phase(model, a, xtr, ytr, ckpt, "phase2", a.finetune, lambda e: a.lr * 0.05, True,
                before=lambda: model.calibrate(calib), after=lambda e: print(f"phase 2 epoch {e}: done", flush=True),
                soft=soft)
    if a.export_margin is not None:
        arch["quantization"]["window_margin"] = a.export_margin
        meta["architecture"] = json.dumps(arch)
        for st in model.qlinears:
            st.margin = a.export_margin
    acc = integer_accuracy(model, calib, xte, yte)
    print(f"integer-circuit test accuracy (emulated, what pkn eval reports): {acc:.4f}", flush=True)

    out = a.out or os.path.join(HERE, "out", f"{a.model}.safetensors")
    save_safetensors(model.state_dict_for_pkn(), out, meta)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
