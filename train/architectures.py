"""The model zoo's architectures, in pkn's model-format layer list (docs/model-format.md)."""

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def conv(name, cin, cout, k, stride=1, padding=0):
    return {"op": "conv2d", "name": name, "in_channels": cin, "out_channels": cout, "kernel": k,
            "stride": stride, "padding": padding}


def pkn_bn(act, bn):
    return [{"op": "pkn", "name": act}, {"op": "batch_norm", "name": bn, "eps": 1e-5}]


def quantization(input_bits, weight_bits, activation_bits, window_margin, activation_clip, table_bits=4):
    return {"input_bits": input_bits, "weight_bits": weight_bits, "activation_bits": activation_bits,
            "window_margin": window_margin, "activation_clip": activation_clip, "table_bits": table_bits}


def fashion_mnist_model(name, q, layers):
    """A 1x28x28 Fashion-MNIST classifier with the given layers."""
    return {"name": name, "input": [1, 28, 28], "classes": CLASSES, "quantization": q, "layers": layers}


def tiny_pkn(q):
    return fashion_mnist_model("tiny-pkn", q, [
        conv("conv1", 1, 4, 3, 2, 1), *pkn_bn("act1", "bn1"),
        conv("conv2", 4, 8, 3, 2, 1), *pkn_bn("act2", "bn2"),
        {"op": "flatten"},
        {"op": "dense", "name": "fc", "in_features": 392, "out_features": 10}])


def cnn_pkn(q):
    return fashion_mnist_model("cnn-pkn", q, [
        conv("conv1", 1, 16, 5), *pkn_bn("act1", "bn1"), {"op": "avg_pool", "kernel": 2},
        conv("conv2", 16, 32, 5), *pkn_bn("act2", "bn2"), {"op": "avg_pool", "kernel": 2},
        {"op": "flatten"},
        {"op": "dense", "name": "fc", "in_features": 512, "out_features": 10}])


def pkr_stages(in_planes, stages):
    """PKR-18's residual stages (Models/PKR18.py in tolusophy/PolyKervNets) with its module names, so
    that a PKR-18 state_dict maps onto them one to one: `stages` is a list of (planes, stride), two
    basic blocks each. A block is Kerv2d 3x3 + BN, plain conv 3x3 + BN, plus the shortcut (identity,
    or Kerv2d 1x1 + BN when the shape changes); nothing after the add. Returns the layers and the
    name of the last block."""
    layers, source = [], "bn1"
    for s, (planes, stride) in enumerate(stages, start=1):
        for b, st in enumerate([stride, 1]):
            p = f"layer{s}.{b}"
            block = [conv(f"{p}.conv1", in_planes, planes, 3, st, 1), *pkn_bn(f"{p}.conv1.kernel_fn", f"{p}.bn1"),
                     conv(f"{p}.conv2", planes, planes, 3, 1, 1), {"op": "batch_norm", "name": f"{p}.bn2", "eps": 1e-5}]
            add = {"op": "add", "name": p, "from": source}
            if st != 1 or in_planes != planes:
                add["shortcut"] = [conv(f"{p}.shortcut.0", in_planes, planes, 1, st, 0),
                                   *pkn_bn(f"{p}.shortcut.0.kernel_fn", f"{p}.shortcut.1")]
            layers += block + [add]
            in_planes, source = planes, p
    return layers, source


def pkr_stem(in_channels, stride=1):
    return [conv("conv1", in_channels, 64, 3, stride, 1), *pkn_bn("conv1.kernel_fn", "bn1")]


def resnet18_pkn(q, stem_stride=1, stage1_stride=1):
    """PKR-18 with all four stages (64/128/256/512) on 1x28x28: 28 -> 14 -> 7 -> 4, pooled 4x4 to 512.
    A stride-2 stem, as ImageNet's ResNet-18 has, runs the stages at 14 -> 7 -> 4 -> 2 (pooled 2x2):
    about 4 times fewer activations to bootstrap. A stride-2 first block of stage 1 as well (with a 1x1
    kervolution shortcut, in place of ImageNet's max pool after the stem) runs them at 7 -> 4 -> 2 -> 1,
    about 10 times fewer than PKR-18."""
    stages, _ = pkr_stages(64, [(64, stage1_stride), (128, 2), (256, 2), (512, 2)])
    side = 28
    for stride in [stem_stride, stage1_stride, 2, 2, 2]:  # 3x3 convolutions with padding 1
        side = (side - 1) // stride + 1
    pool = [{"op": "avg_pool", "kernel": side}] if side > 1 else []
    return fashion_mnist_model("resnet18-pkn", q, [
        *pkr_stem(1, stem_stride), *stages, *pool, {"op": "flatten"},
        {"op": "dense", "name": "fc", "in_features": 512, "out_features": 10}])


ZOO = {"tiny-pkn": tiny_pkn, "cnn-pkn": cnn_pkn, "resnet18-pkn": resnet18_pkn}
