"""Three-conv network of the preprocessing, penalties and optimizers homeworks."""
from typing import Optional

from torch import nn

from cifar_ablate.models.activation import make_activation


class CNN3(nn.Module):
    """conv5x5(10) → pool → conv5x5(30) → conv5x5(60) → pool → fc270 → fc130 → fc10.

    `dropout` > 0 adds Dropout after fc1 and, unless `dropout2` says otherwise, the same after fc2
    (the homework's cnn3_dropout uses 0.3 and 0.2).
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0,
                 dropout2: Optional[float] = None):
        super().__init__()
        dropout2 = dropout if dropout2 is None else dropout2
        self.conv1 = nn.Conv2d(3, 10, 5)
        self.conv2 = nn.Conv2d(10, 30, 5)
        self.conv3 = nn.Conv2d(30, 60, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(60 * 3 * 3, 270)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(270, 130)
        self.drop2 = nn.Dropout(dropout2) if dropout2 > 0 else nn.Identity()
        self.fc3 = nn.Linear(130, num_classes)
        self.act = make_activation(activation)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.act(self.conv2(x))
        x = self.pool(self.act(self.conv3(x)))
        x = self.drop1(self.act(self.fc1(x.flatten(1))))
        x = self.drop2(self.act(self.fc2(x)))
        return self.fc3(x)
