"""The 64-channel 3x3 network of the regularization, initialization and LR-schedule homeworks."""
from torch import nn

from cifar_ablate.models.activation import make_activation


class CNNWide(nn.Module):
    """conv3x3 pad1(64) → pool → conv3x3(64) → pool → conv3x3(32) → pool → fc512 → fc10.

    Only the first conv is padded, as in the homework (Keras `padding="same"` on the first layer
    alone), so the last feature map is 32x2x2. `dropout` > 0 adds Dropout2d after conv2's
    activation and Dropout after fc1.
    """

    def __init__(self, num_classes: int = 10, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.drop2 = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = nn.Conv2d(64, 32, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 2 * 2, 512)
        self.drop_fc1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(512, num_classes)
        self.act = make_activation(activation)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.drop2(self.act(self.conv2(x))))
        x = self.pool(self.act(self.conv3(x)))
        x = self.drop_fc1(self.act(self.fc1(x.flatten(1))))
        return self.fc2(x)
