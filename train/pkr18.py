"""A PyTorch PKR-18 with the PolyKervNets repository's module names (Models/PKR18.py), written here
for testing the importer: `conv1.weight`, `conv1.kernel_fn.cp`, `bn1.*`, `layer{s}.{b}.conv1...`,
`layer{s}.{b}.shortcut.0...`, `fc.*`. Its forward has the repository's quirk: stage 4 is built but
skipped, and stage 3's output is pooled 4x4 (256x8x8 -> 256x2x2 on 32x32 inputs, so fc takes 1024).
Dropout is left out: it is the identity at inference."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class PolynomialKernel(nn.Module):
    def __init__(self):
        super().__init__()
        self.cp = nn.Parameter(torch.tensor(1.0))


class Kerv2d(nn.Conv2d):
    """(cp + conv(x))^2, cp in `kernel_fn.cp`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernel_fn = PolynomialKernel()

    def forward(self, x):
        return (self.kernel_fn.cp + super().forward(x)) ** 2


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = Kerv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(Kerv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x)))) + self.shortcut(x)


class PKR18(nn.Module):
    def __init__(self, in_channels=3, classes=10, fc_in=1024):
        super().__init__()
        self.conv1 = Kerv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes_in, stages = 64, []
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            stages.append(nn.Sequential(BasicBlock(planes_in, planes, stride), BasicBlock(planes, planes, 1)))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(fc_in, classes)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, 4)
        return self.fc(out.reshape(out.size(0), -1))
