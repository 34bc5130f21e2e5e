"""LeNet as the homeworks build it: two 5x5 convs, three fully connected layers."""
from torch import nn

from cifar_ablate.models.activation import make_activation


class LeNet(nn.Module):
    """conv5x5(6) → pool → conv5x5(16) → pool → fc120 → fc84 → fc10.

    `dropout` > 0 adds Dropout after fc1; `batch_norm` adds BatchNorm2d(16) after conv2, before its
    activation (the homework's lenet_bn).
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = make_activation(activation)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.bn2(self.conv2(x))))
        x = self.drop1(self.act(self.fc1(x.flatten(1))))
        x = self.act(self.fc2(x))
        return self.fc3(x)
