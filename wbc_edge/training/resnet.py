"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", 2015).

Defined here because torchvision cannot be imported with the CPU PyTorch this
project uses. Module and parameter names are torchvision's
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``...),
so a torchvision ``resnet18`` state_dict loads unchanged.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu & He, 2018): per-image statistics, so no
    lab's feature statistics are frozen into the model as BatchNorm's are."""
    return nn.GroupNorm(32, channels)


#: The normalization layers a ResNet here can use, by the name recorded in metadata.
NORM_LAYERS: dict[str, NormLayer] = {"batch": nn.BatchNorm2d, "group": group_norm}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, for the projection shortcut."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet built from BasicBlocks; ``layers`` gives the blocks per stage."""

    def __init__(self, layers: list[int], num_classes: int = 1000, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.inplanes = 64
        self._norm_layer = norm_layer
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Start each residual branch at zero so every block begins as identity
        # (Goyal et al., 2017); helps training from scratch.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                self._norm_layer(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, self._norm_layer)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes, norm_layer=self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The outputs of layer1..layer4 (what the domain guard looks at)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return c1, c2, c3, self.layer4(c3)

    def classify(self, c4: Tensor) -> Tensor:
        """Logits from layer4's output: global average pool, then fc."""
        return self.fc(self.avgpool(c4).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.stages(x)[-1])


def resnet18(num_classes: int = 1000, norm: str = "batch") -> ResNet:
    """ResNet-18: [2, 2, 2, 2] BasicBlocks, with BatchNorm (``norm="batch"``,
    torchvision's) or GroupNorm (``"group"``)."""
    if norm not in NORM_LAYERS:
        raise ValueError(f"norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
    return ResNet([2, 2, 2, 2], num_classes=num_classes, norm_layer=NORM_LAYERS[norm])
