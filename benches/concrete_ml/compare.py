"""Concrete ML's side of benches/compare_concrete_ml.sh: the zoo's PKN architectures with Brevitas
4-bit quantization-aware training, compiled with Concrete ML's defaults, then timed encrypted.

    target/concrete-venv/bin/python benches/concrete_ml/compare.py --model tiny-pkn --epochs 2

Prints the torch (Brevitas), quantized-clear and FHE-simulated accuracies, compilation and key
generation times, the circuit's maximum bit width, bootstrap count and error probabilities, then
seconds per image of `forward(fhe="execute")` (quantize, encrypt, run, decrypt, dequantize) on
--fhe-images test images. The last line is machine-readable for the shell script:
    RESULT model=... fhe_s_per_image=... keygen_s=... max_bit_width=... p_error=... global_p_error=...

Not part of CI. Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
"""

import argparse
import gzip
import inspect
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

import brevitas.nn as qnn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "train"))
from pknq import PKN  # noqa: E402  the same activation module our training uses

DATA_DIRS = ["/usr/share/datasets/fashion-mnist", "/usr/share/fashion-mnist"]


def read_idx(path):
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(prefix):
    for d in DATA_DIRS:
        for ext in (".gz", ""):
            img = os.path.join(d, f"{prefix}-images-idx3-ubyte{ext}")
            lab = os.path.join(d, f"{prefix}-labels-idx1-ubyte{ext}")
            if os.path.exists(img) and os.path.exists(lab):
                return read_idx(img), read_idx(lab)
    sys.exit(f"Fashion-MNIST not found in {DATA_DIRS}: apt-get install -y dataset-fashion-mnist")


def to_float(pixels_u8):
    """Pixels to [-1, 1], so the input quantizer's signed 4-bit range covers them."""
    return torch.from_numpy(pixels_u8.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)


def qid(bits):
    return qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)


def qconv(cin, cout, k, bits, stride=1, padding=0):
    return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=padding, bias=True,
                           weight_bit_width=bits, bias_quant=None)


class TinyPKN(nn.Module):
    """tiny-pkn: conv3x3/2 1->4, PKN, BN; conv3x3/2 4->8, PKN, BN; dense 392->10."""

    def __init__(self, bits):
        super().__init__()
        self.q0 = qid(bits)
        self.conv1, self.act1, self.bn1, self.q1 = qconv(1, 4, 3, bits, 2, 1), PKN(), nn.BatchNorm2d(4), qid(bits)
        self.conv2, self.act2, self.bn2, self.q2 = qconv(4, 8, 3, bits, 2, 1), PKN(), nn.BatchNorm2d(8), qid(bits)
        self.fc = qnn.QuantLinear(392, 10, bias=True, weight_bit_width=bits, bias_quant=None)

    def forward(self, x):
        x = self.q0(x)
        x = self.q1(self.bn1(self.act1(self.conv1(x))))
        x = self.q2(self.bn2(self.act2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


class CnnPKN(nn.Module):
    """cnn-pkn: conv5x5 1->16, PKN, BN, avgpool 2; conv5x5 16->32, PKN, BN, avgpool 2; dense 512->10.

    Concrete ML needs Brevitas-quantized inputs for every mixing op (conv, pooling, dense): a
    QuantIdentity before each average pool (the PKN/BN table) and one after it (the conv's input).
    """

    def __init__(self, bits):
        super().__init__()
        self.q0 = qid(bits)
        self.conv1, self.act1, self.bn1, self.q1 = qconv(1, 16, 5, bits), PKN(), nn.BatchNorm2d(16), qid(bits)
        self.pool1, self.p1 = nn.AvgPool2d(2), qid(bits)
        self.conv2, self.act2, self.bn2, self.q2 = qconv(16, 32, 5, bits), PKN(), nn.BatchNorm2d(32), qid(bits)
        self.pool2, self.p2 = nn.AvgPool2d(2), qid(bits)
        self.fc = qnn.QuantLinear(512, 10, bias=True, weight_bit_width=bits, bias_quant=None)

    def forward(self, x):
        x = self.q0(x)
        x = self.p1(self.pool1(self.q1(self.bn1(self.act1(self.conv1(x))))))
        x = self.p2(self.pool2(self.q2(self.bn2(self.act2(self.conv2(x))))))
        return self.fc(torch.flatten(x, 1))


MODELS = {"tiny-pkn": TinyPKN, "cnn-pkn": CnnPKN}


def torch_accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return (pred.numpy() == y).mean()


def train(model, xtr, ytr, xte, yte, epochs, lr, batch):
    """Adam, cosine schedule, gradient clipping: the recipe train/train.py uses for pkn's models."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    yt = torch.from_numpy(ytr.astype(np.int64))
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xtr[idx]), yt[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # PKN training is prone to blow-ups
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, Brevitas test accuracy "
              f"{torch_accuracy(model, xte, yte):.4f} ({time.time() - t0:.0f} s)", flush=True)


def module_accuracy(qm, x, y, fhe):
    pred = np.concatenate([qm.forward(x[i:i + 100], fhe=fhe).argmax(1) for i in range(0, len(x), 100)])
    return (pred == y).mean()


def print_key_parameters(circuit):
    """The TFHE parameters Concrete's optimizer chose: one line per bootstrap / keyswitch key."""
    try:
        keyset = json.loads(circuit.client.specs.program_info.serialize())["keyset"]
        for b in keyset["lweBootstrapKeys"]:
            q = b["params"]
            print(f"bootstrap key {b['id']}: n {q['inputLweDimension']} -> k {q['glweDimension']}, "
                  f"N {q['polynomialSize']}, decomposition 2^{q['baseLog']}x{q['levelCount']}", flush=True)
        for k in keyset["lweKeyswitchKeys"]:
            q = k["params"]
            print(f"keyswitch key {k['id']}: {q['inputLweDimension']} -> {q['outputLweDimension']}, "
                  f"decomposition 2^{q['baseLog']}x{q['levelCount']}", flush=True)
    except Exception as e:  # informational only
        print(f"key parameters unavailable: {e}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny-pkn")
    p.add_argument("--epochs", type=int, default=2, help="QAT epochs on the 60k training images")
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (Brevitas)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calib-images", type=int, default=1000, help="compilation input set (training images)")
    p.add_argument("--sim-images", type=int, default=1000, help="test images for quantized / simulated accuracy")
    p.add_argument("--fhe-images", type=int, default=1, help="test images run encrypted (0: compile only)")
    p.add_argument("--fhe-first", type=int, default=1,
                   help="first test image run encrypted (1: the pullover pkn's bench encrypts)")
    p.add_argument("--train-images", type=int, default=60000, help="training images used (quick checks)")
    p.add_argument("--rounding-bits", type=int, default=None,
                   help="rounding_threshold_bits (default: none, Concrete ML's default)")
    p.add_argument("--rounding-method", choices=["exact", "approximate"], default="exact",
                   help="with --rounding-bits: Concrete ML's rounding exactness")
    p.add_argument("--force-fhe", action="store_true", help="run encrypted even if the keys exceed 80%% of RAM")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)

    import concrete.fhe
    import concrete.ml
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    try:
        from importlib.metadata import version
        cp_version = version("concrete-python")
    except Exception:  # pragma: no cover
        cp_version = "?"
    print(f"== Concrete ML {concrete.ml.__version__} (concrete-python {cp_version}, torch {torch.__version__}), "
          f"{a.model}, {a.bits}-bit QAT, {os.cpu_count()} cores", flush=True)
    sig = inspect.signature(compile_brevitas_qat_model).parameters
    defaults = {k: sig[k].default for k in ("p_error", "global_p_error", "rounding_threshold_bits") if k in sig}
    print(f"compile_brevitas_qat_model defaults used: {defaults}", flush=True)

    xtr_u8, ytr = load_split("train")
    xte_u8, yte = load_split("t10k")
    xtr_u8, ytr = xtr_u8[:a.train_images], ytr[:a.train_images]
    xtr, xte = to_float(xtr_u8), to_float(xte_u8)

    model = MODELS[a.model](a.bits)
    t0 = time.time()
    train(model, xtr, ytr, xte, yte, a.epochs, a.lr, a.batch)
    print(f"training: {time.time() - t0:.0f} s", flush=True)
    model.eval()
    acc_torch = torch_accuracy(model, xte, yte)

    calib = xtr[np.random.permutation(len(xtr))[:a.calib_images]].numpy()
    t0 = time.time()
    kwargs, rounding = {}, "none"
    if a.rounding_bits is not None:  # not Concrete ML's default: only when asked
        kwargs["rounding_threshold_bits"] = {"n_bits": a.rounding_bits, "method": a.rounding_method}
        rounding = f"{a.rounding_bits}-bit-{a.rounding_method}"
        print(f"non-default setting: rounding_threshold_bits={kwargs['rounding_threshold_bits']}", flush=True)
    qm = compile_brevitas_qat_model(model, calib, **kwargs)
    t_compile = time.time() - t0
    circuit = qm.fhe_circuit
    bits = circuit.graph.maximum_integer_bit_width()
    stats = {}
    for k in ("programmable_bootstrap_count", "key_switch_count", "complexity"):
        try:
            stats[k] = getattr(circuit, k)
        except Exception:
            pass
    print(f"compilation: {t_compile:.1f} s; max bit width {bits}; p_error {circuit.p_error:.3g}, "
          f"global_p_error {circuit.global_p_error:.3g}; {stats}", flush=True)
    try:
        sizes = {k: getattr(circuit, k) for k in ("size_of_secret_keys", "size_of_bootstrap_keys",
                                                  "size_of_keyswitch_keys", "size_of_inputs", "size_of_outputs")}
        print("sizes (bytes): " + ", ".join(f"{k[8:]} {v:,}" for k, v in sizes.items()), flush=True)
    except Exception as e:  # sizes are informational only
        print(f"sizes unavailable: {e}", flush=True)

    print_key_parameters(circuit)

    xs, ys = xte[:a.sim_images].numpy(), yte[:a.sim_images]
    acc_clear = module_accuracy(qm, xs, ys, "disable")
    t0 = time.time()
    acc_sim = module_accuracy(qm, xs, ys, "simulate")
    t_sim = time.time() - t0
    print(f"accuracy: Brevitas (torch) {acc_torch:.4f} on {len(xte)} test images; quantized clear "
          f"{acc_clear:.4f}, FHE simulation {acc_sim:.4f} on the first {len(xs)} "
          f"(simulation {t_sim / len(xs) * 1000:.1f} ms/image)", flush=True)

    fhe_s, keygen_s = float("nan"), float("nan")
    key_bytes = circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys
    mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if a.fhe_images > 0 and key_bytes > 0.8 * mem_bytes and not a.force_fhe:
        print(f"FHE execution skipped: the server keys alone take {key_bytes / 2**30:.1f} GiB, this machine "
              f"has {mem_bytes / 2**30:.1f} GiB (--force-fhe tries anyway; --rounding-bits shrinks them)", flush=True)
        a.fhe_images = 0
    if a.fhe_images > 0:
        t0 = time.time()
        circuit.keygen(force=True)
        keygen_s = time.time() - t0
        print(f"key generation: {keygen_s:.1f} s", flush=True)
        times, agree = [], 0
        for i in range(a.fhe_first, a.fhe_first + a.fhe_images):
            x = xte[i:i + 1].numpy()
            t0 = time.time()
            out = qm.forward(x, fhe="execute")
            times.append(time.time() - t0)
            sim = qm.forward(x, fhe="simulate")
            same = int(out.argmax(1)[0] == sim.argmax(1)[0])
            agree += same
            print(f"FHE image {i} (label {yte[i]}): {times[-1]:.1f} s, class {out.argmax(1)[0]}, "
                  f"simulation class {sim.argmax(1)[0]}, max |logit diff| vs simulation "
                  f"{np.abs(out - sim).max():.3g}", flush=True)
        fhe_s = float(np.mean(times))
        print(f"FHE execution: {fhe_s:.1f} s per image over {len(times)} image(s); "
              f"{agree}/{len(times)} agree with simulation", flush=True)

    print(f"RESULT model={a.model} fhe_s_per_image={fhe_s:.2f} keygen_s={keygen_s:.2f} compile_s={t_compile:.1f} "
          f"key_gib={key_bytes / 2**30:.1f} rounding={rounding} max_bit_width={bits} p_error={circuit.p_error:.3g} global_p_error={circuit.global_p_error:.3g} "
          f"pbs={stats.get('programmable_bootstrap_count', '?')} acc_torch={acc_torch:.4f} "
          f"acc_clear={acc_clear:.4f} acc_sim={acc_sim:.4f} version={concrete.ml.__version__}", flush=True)


if __name__ == "__main__":
    main()
