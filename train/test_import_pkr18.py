"""The PKR-18 importer on a randomly initialised PKR-18: the converted pkn model, evaluated in float by
a direct interpreter of pkn's layer list (docs/model-format.md), gives the same logits as PKR-18's
own forward, and it passes the integer-circuit emulation's loader.

    python -m train.test_import_pkr18      (or python train/test_import_pkr18.py, or pytest)
"""
import os
import sys

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file, not with -m: import the package from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from train.architectures import quantization
from train.import_pkr18 import convert
from train.pknq import QNet
from train.pkr18 import PKR18


def run_layers(layers, x, t, saved):
    """Float forward of a pkn layer list with tensors `t` (name -> tensor)."""
    for l in layers:
        op = l["op"]
        if op == "conv2d":
            x = F.conv2d(x, t[f"{l['name']}.weight"], t.get(f"{l['name']}.bias"), l.get("stride", 1), l.get("padding", 0))
        elif op == "dense":
            x = F.linear(x, t[f"{l['name']}.weight"], t.get(f"{l['name']}.bias"))
        elif op == "pkn":
            x = (t[f"{l['name']}.cp"] + x) ** 2
        elif op == "batch_norm":
            n = l["name"]
            x = F.batch_norm(x, t[f"{n}.running_mean"], t[f"{n}.running_var"], t[f"{n}.weight"], t[f"{n}.bias"],
                             False, 0.0, l.get("eps", 1e-5))
        elif op == "avg_pool":
            x = F.avg_pool2d(x, l["kernel"], l.get("stride") or l["kernel"])
        elif op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "add":
            x = x + run_layers(l.get("shortcut", []), saved[l["from"]], t, saved)
        else:
            raise ValueError(op)
        if l.get("name"):
            saved[l["name"]] = x
    return x


def test_converted_model_computes_pkr18_forward():
    torch.manual_seed(0)
    net = PKR18()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
        if hasattr(m, "kernel_fn"):
            m.kernel_fn.cp.data.uniform_(0.3, 0.7)
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data *= 0.5
    net.eval()
    tensors, arch = convert(net.state_dict(), [3, 32, 32], quantization(4, 4, 4, 0.25, 0.001))
    assert not any(k.startswith("layer4") for k in tensors), "stage 4 is not in PKR-18's forward"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        want = net(x)
        got = run_layers(arch["layers"], x, tensors, {})
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err < 1e-5, f"relative error {err}"
    # Every parameter the emulation (and so pkn) reads exists with its shape.
    qnet = QNet(arch)
    for name, m in qnet.names.items():
        for k, v in m.state_dict().items():
            if k == "num_batches_tracked" or (k == "bias" and f"{name}.bias" not in tensors and "bn" not in name
                                              and "shortcut.1" not in name):
                continue
            assert tensors[f"{name}.{k}"].shape == v.shape, f"{name}.{k}"
    print(f"PKR-18 import: {len(tensors)} tensors, max relative logit error {err:.2e}")


def test_a_wrong_input_shape_is_refused():
    net = PKR18()
    try:
        convert(net.state_dict(), [3, 28, 28], quantization(4, 4, 4, 0.25, 0.001))
    except ValueError as e:
        assert "fc takes 1024" in str(e), e
    else:
        raise AssertionError("28x28 inputs cannot feed PKR-18's fc(1024)")


if __name__ == "__main__":
    test_converted_model_computes_pkr18_forward()
    test_a_wrong_input_shape_is_refused()
    print("ok")
