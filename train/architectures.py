"""The model zoo's architectures, in pkn's model-format layer list (docs/model-format.md)."""

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def conv(name, cin, cout, k, stride=1, padding=0):
    return {"op": "conv2d", "name": name, "in_channels": cin, "out_channels": cout, "kernel": k,
            "stride": stride, "padding": padding}


def pkn_bn(act, bn):
    return [{"op": "pkn", "name": act}, {"op": "batch_norm", "name": bn, "eps": 1e-5}]


def quantization(input_bits, weight_bits, activation_bits, window_margin, activation_clip):
    return {"input_bits": input_bits, "weight_bits": weight_bits, "activation_bits": activation_bits,
            "window_margin": window_margin, "activation_clip": activation_clip}


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


ZOO = {"tiny-pkn": tiny_pkn, "cnn-pkn": cnn_pkn}
