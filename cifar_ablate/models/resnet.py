"""CIFAR ResNets after He et al. 2016 (section 4.2): 6n+2 layers, 16/32/64 channels. Where the shape changes
the shortcut is a 1x1 conv + BN projection (the paper's option B); its CIFAR nets padded identity shortcuts
with zeros (option A), which has 2,752 fewer parameters at ResNet-20."""
from torch import nn

from cifar_ablate.models.activation import make_activation


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)
        # Projection shortcut (1x1 conv + BN) only where the shape changes.
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3(16)+BN → 3 stages of `blocks_per_stage` basic blocks → global average pool → fc.

    blocks_per_stage=3 is ResNet-20. `dropout` > 0 adds Dropout before the classifier.
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
                 blocks_per_stage: int = 3):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage={blocks_per_stage}: must be >= 1")
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = make_activation(activation)
        stages, in_channels = [], 16
        for out_channels, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, out_channels, stride if i == 0 else 1, activation))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.drop(self.pool(x).flatten(1)))
