"""Classic LeNet-5: the third 5x5 conv (120 maps of 1x1) replaces the first fully connected layer."""
from torch import nn

from cifar_ablate.models.activation import make_activation


class LeNet5(nn.Module):
    """conv5x5(6) → pool → conv5x5(16) → pool → conv5x5(120) → fc84 → fc10.

    `dropout` > 0 adds Dropout after conv2's activation; `batch_norm` adds BatchNorm2d(6) after conv1,
    before its activation (the homework's lenet5_bn).
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.drop2 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, num_classes)
        self.act = make_activation(activation)

    def forward(self, x):
        x = self.pool(self.act(self.bn1(self.conv1(x))))
        x = self.pool(self.drop2(self.act(self.conv2(x))))
        x = self.act(self.conv3(x)).flatten(1)
        x = self.act(self.fc1(x))
        return self.fc2(x)
