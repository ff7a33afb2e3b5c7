"""Concrete ML's side of benches/compare_concrete_ml.sh: the zoo's PKN architectures trained as pkn's
are (float epochs, then Brevitas 4-bit quantization-aware epochs, on the full training set), then
compiled in every configuration asked for and each one timed encrypted.

    target/concrete-venv/bin/python benches/concrete_ml/compare.py --model cnn-pkn

Configurations (--configs): `none` (Concrete ML's default: no rounding) and `B-exact` /
`B-approximate` (rounding_threshold_bits B with that method). For each: compilation time, the
circuit's maximum bit width, bootstrap count, error probabilities, key sizes and parameters, the
quantized-clear accuracy on --accuracy-images test images, then, if its keys fit in 80 % of this
machine's memory, key generation and the seconds of `forward(fhe="execute")` (quantize, encrypt,
run, decrypt, dequantize) per test image, and how many output values equal Concrete ML's own clear
circuit's (`fhe="disable"`). Each configuration runs in a process of its own (spawned: the keys
leave memory with it), and its encrypted run is stopped, reported as `stopped_after`, once it has
taken longer than the fastest configuration of its kind that ran in full, since it can then be
neither the fastest nor the fastest exact: approximate rounding (not exact by design) against the
fastest, exact and no rounding against the fastest exact. --stop-after seeds both from an earlier
run. One machine-readable line per configuration:
    RESULT config=... fhe_s_per_image=... stopped_after=... exact_outputs=.../... key_gib=... pbs=... ...

Not part of CI. Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
"""

import argparse
import gzip
import inspect
import json
import multiprocessing
import os
import queue
import sys
import tempfile
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
    """An activation quantizer; none in the float twin (bits None)."""
    return nn.Identity() if bits is None else qnn.QuantIdentity(bit_width=bits, return_quant_tensor=True)


def qconv(cin, cout, k, bits, stride=1, padding=0):
    if bits is None:
        return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
    return qnn.QuantConv2d(cin, cout, k, stride=stride, padding=padding, bias=True,
                           weight_bit_width=bits, bias_quant=None)


def qlinear(cin, cout, bits):
    if bits is None:
        return nn.Linear(cin, cout, bias=True)
    return qnn.QuantLinear(cin, cout, bias=True, weight_bit_width=bits, bias_quant=None)


class TinyPKN(nn.Module):
    """tiny-pkn: conv3x3/2 1->4, PKN, BN; conv3x3/2 4->8, PKN, BN; dense 392->10."""

    def __init__(self, bits):
        super().__init__()
        self.q0 = qid(bits)
        self.conv1, self.act1, self.bn1, self.q1 = qconv(1, 4, 3, bits, 2, 1), PKN(), nn.BatchNorm2d(4), qid(bits)
        self.conv2, self.act2, self.bn2, self.q2 = qconv(4, 8, 3, bits, 2, 1), PKN(), nn.BatchNorm2d(8), qid(bits)
        self.fc = qlinear(392, 10, bits)

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
        self.fc = qlinear(512, 10, bits)

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


def train(model, xtr, ytr, xte, yte, epochs, lr, batch, phase):
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
        print(f"{phase} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy "
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


# Likely fastest first, so that a run cut short has measured those; "none" last (its keys rarely fit).
CONFIGS = ["5-approximate", "6-approximate", "5-exact", "6-exact", "7-approximate", "7-exact", "none"]


def rounding_kwargs(config):
    """compile_brevitas_qat_model's arguments for a configuration name."""
    if config == "none":
        return {}
    bits, method = config.split("-")
    return {"rounding_threshold_bits": {"n_bits": int(bits), "method": method}}


def load_test_set():
    """The 10k test images, pixels in [-1, 1], and their labels."""
    xte_u8, yte = load_split("t10k")
    return to_float(xte_u8), yte


def load_data(a):
    """Training images (the first --train-images) and the test set, pixels in [-1, 1]."""
    xtr_u8, ytr = load_split("train")
    return (to_float(xtr_u8[:a.train_images]), ytr[:a.train_images], *load_test_set())


def trained_model(a, xtr, ytr, xte, yte):
    """Float epochs on a float twin of the network, its weights loaded into the Brevitas network,
    then quantization-aware epochs: pkn's own recipe (train/train.py)."""
    model = MODELS[a.model](a.bits)
    t0 = time.time()
    if a.float_epochs > 0:
        twin = MODELS[a.model](None)
        train(twin, xtr, ytr, xte, yte, a.float_epochs, a.lr, a.batch, "float")
        missing = model.load_state_dict(twin.state_dict(), strict=False).missing_keys
        print(f"float weights loaded; {len(missing)} quantizer parameters start fresh", flush=True)
    train(model, xtr, ytr, xte, yte, a.epochs, a.lr, a.batch, "QAT")
    print(f"training: {time.time() - t0:.0f} s", flush=True)
    model.eval()
    return model


def config_process(a, config, state_path, calib, reference, acc_torch, events):
    """One configuration in a process of its own, so that its encrypted run can be stopped (the
    parent kills the process) and its keys leave memory with it. Reports to the parent on `events`:
    ("info", dict) once compiled, ("start", image) before each encrypted image, ("image", seconds,
    equal outputs, outputs) after it."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    import concrete.ml
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    model = MODELS[a.model](a.bits)
    model.load_state_dict(torch.load(state_path))
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(calib[:len(reference)])).numpy()
    if not np.array_equal(logits, reference):
        sys.exit("the trained model did not survive the move to the configuration's process")
    xte, yte = load_test_set()

    print(f"\n== configuration {config}", flush=True)
    t0 = time.time()
    qm = compile_brevitas_qat_model(model, calib, **rounding_kwargs(config))
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
    print_key_parameters(circuit)
    xs, ys = xte[:a.accuracy_images].numpy(), yte[:a.accuracy_images]
    acc_clear = module_accuracy(qm, xs, ys, "disable")
    print(f"accuracy: Brevitas (torch) {acc_torch:.4f} on {len(xte)} test images; quantized clear "
          f"{acc_clear:.4f} on the first {len(xs)}", flush=True)

    key_bytes = circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys
    mem_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fits = a.force_fhe or key_bytes <= 0.8 * mem_bytes
    if a.fhe_images > 0 and not fits:
        print(f"FHE execution skipped: the server keys alone take {key_bytes / 2**30:.1f} GiB, this machine "
              f"has {mem_bytes / 2**30:.1f} GiB (--force-fhe tries anyway)", flush=True)
    info = {"config": config, "keys_fit": "yes" if fits else "no", "compile_s": f"{t_compile:.1f}",
            "key_gib": f"{key_bytes / 2**30:.2f}", "max_bit_width": bits, "p_error": f"{circuit.p_error:.3g}",
            "global_p_error": f"{circuit.global_p_error:.3g}",
            "pbs": stats.get("programmable_bootstrap_count", "?"),
            "complexity": f"{stats['complexity']:.3g}" if "complexity" in stats else "?", "acc_torch": f"{acc_torch:.4f}",
            "acc_clear": f"{acc_clear:.4f}", "accuracy_images": len(xs), "version": concrete.ml.__version__}
    if a.fhe_images > 0 and fits:
        t0 = time.time()
        circuit.keygen(force=True)
        info["keygen_s"] = f"{time.time() - t0:.2f}"
        print(f"key generation: {info['keygen_s']} s", flush=True)
    events.put(("info", info))
    if a.fhe_images == 0 or not fits:
        return
    for i in range(a.fhe_first, a.fhe_first + a.fhe_images):
        x = xte[i:i + 1].numpy()
        events.put(("start", i))
        t0 = time.time()
        out = qm.forward(x, fhe="execute")
        seconds = time.time() - t0
        clear = qm.forward(x, fhe="disable")
        same = int((out == clear).sum())
        print(f"FHE image {i} (label {yte[i]}): {seconds:.1f} s, class {out.argmax(1)[0]}, clear circuit's "
              f"class {clear.argmax(1)[0]}, {same} of {out.size} outputs equal the clear circuit's", flush=True)
        events.put(("image", seconds, same, out.size))


def is_approximate(config):
    """Approximate rounding: not exact by design, so it competes for the fastest only."""
    return config.endswith("approximate")


class Bounds:
    """When an encrypted run can stop: once it has taken longer than the fastest configuration of its
    kind that ran in full, it can be neither the fastest nor the fastest exact one. An approximate
    configuration (not exact by design) competes for the fastest; exact rounding and no rounding
    compete for the fastest exact. Seeded from --stop-after (an earlier run's figures), tightened
    as configurations end."""

    def __init__(self, approximate, exact):
        self.fastest, self.fastest_exact = approximate, exact

    def of(self, config):
        return self.fastest if is_approximate(config) else self.fastest_exact

    def record(self, config, seconds, exact):
        if self.fastest is None or seconds < self.fastest:
            self.fastest = seconds
        if exact and not is_approximate(config) and (self.fastest_exact is None or seconds < self.fastest_exact):
            self.fastest_exact = seconds


def run_config(a, config, state_path, calib, reference, acc_torch, bounds):
    """Runs one configuration in its own process, stops its encrypted run at the configuration's
    bound, and prints its RESULT line."""
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    proc = ctx.Process(target=config_process, args=(a, config, state_path, calib, reference, acc_torch, events))
    proc.start()
    info, times, same, total, stopped, deadline = None, [], 0, 0, None, None
    bound = bounds.of(config)
    while True:
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            if deadline is not None and time.time() > deadline:
                proc.kill()
                stopped = bound
                kind = "" if is_approximate(config) else "exact "
                print(f"FHE execution stopped after {bound:.1f} s: slower than the fastest {kind}configuration "
                      "(this run's, or --stop-after's)", flush=True)
                break
            if not proc.is_alive():
                break
            continue
        if event[0] == "info":
            info = event[1]
        elif event[0] == "start":
            deadline = None if bound is None else time.time() + bound
        else:
            times.append(event[1])
            same, total, deadline = same + event[2], total + event[3], None
    proc.join()
    fhe_s = float(np.mean(times)) if times and stopped is None else float("nan")
    exact = f"{same}/{total}" if times and stopped is None else "-"
    if not np.isnan(fhe_s):
        print(f"FHE execution: {fhe_s:.1f} s per image over {len(times)} image(s)", flush=True)
        bounds.record(config, fhe_s, same == total)
    fields = {"config": config, "fhe_s_per_image": f"{fhe_s:.2f}",
              "stopped_after": "-" if stopped is None else f"{stopped:.1f}", "exact_outputs": exact,
              "keygen_s": "nan", **(info or {})}
    if info is None or (stopped is None and proc.exitcode != 0):
        fields["failed"] = f"exit-code-{proc.exitcode}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="cnn-pkn")
    p.add_argument("--float-epochs", type=int, default=4, help="float epochs before QAT (a float twin)")
    p.add_argument("--epochs", type=int, default=2, help="QAT epochs")
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (Brevitas)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--calib-images", type=int, default=300, help="compilation input set (training images)")
    p.add_argument("--accuracy-images", type=int, default=10000, help="test images for quantized-clear accuracy")
    p.add_argument("--fhe-images", type=int, default=1, help="test images run encrypted (0: compile only)")
    p.add_argument("--fhe-first", type=int, default=1,
                   help="first test image run encrypted (1: the pullover pkn's bench encrypts)")
    p.add_argument("--train-images", type=int, default=60000, help="training images used (quick checks)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated configurations: none, B-exact, B-approximate (default: all of "
                        + ", ".join(CONFIGS) + ")")
    p.add_argument("--force-fhe", action="store_true", help="run encrypted even if the keys exceed 80%% of RAM")
    p.add_argument("--stop-after", metavar="FASTEST_S,FASTEST_EXACT_S",
                   help="the fastest and fastest exact seconds per image known from an earlier run: an "
                        "encrypted run that exceeds its kind's is stopped (as later in this run once a "
                        "configuration of that kind has run in full)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    try:
        seeds = [float(v) for v in a.stop_after.split(",")] if a.stop_after else [None, None]
        assert len(seeds) == 2 and all(v is None or v > 0 for v in seeds)
    except (ValueError, AssertionError):
        p.error(f"--stop-after wants two positive numbers of seconds, FASTEST_S,FASTEST_EXACT_S; got {a.stop_after!r}")
    configs = [c for c in a.configs.split(",") if c]
    for c in configs:
        if c != "none" and (len(c.split("-")) != 2 or not c.split("-")[0].isdigit()
                            or c.split("-")[1] not in ("exact", "approximate")):
            p.error(f"unknown configuration {c!r}: use none, B-exact or B-approximate")

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)

    import concrete.ml
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    try:
        from importlib.metadata import version
        cp_version = version("concrete-python")
    except Exception:  # pragma: no cover
        cp_version = "?"
    print(f"== Concrete ML {concrete.ml.__version__} (concrete-python {cp_version}, torch {torch.__version__}), "
          f"{a.model}, {a.float_epochs} float + {a.epochs} {a.bits}-bit QAT epochs, {os.cpu_count()} cores", flush=True)
    sig = inspect.signature(compile_brevitas_qat_model).parameters
    defaults = {k: sig[k].default for k in ("p_error", "global_p_error", "rounding_threshold_bits") if k in sig}
    print(f"compile_brevitas_qat_model defaults (p_error is kept in every configuration): {defaults}", flush=True)

    xtr, ytr, xte, yte = load_data(a)
    model = trained_model(a, xtr, ytr, xte, yte)
    acc_torch = torch_accuracy(model, xte, yte)
    calib = xtr[np.random.permutation(len(xtr))[:a.calib_images]].numpy()
    with torch.no_grad():
        reference = model(torch.from_numpy(calib[:16])).numpy()
    bounds = Bounds(*seeds)
    with tempfile.TemporaryDirectory() as tmp:
        state_path = os.path.join(tmp, "model.pt")
        torch.save(model.state_dict(), state_path)
        for config in configs:
            run_config(a, config, state_path, calib, reference, acc_torch, bounds)


if __name__ == "__main__":
    main()
