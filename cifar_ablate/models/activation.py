"""The activation functions every model accepts by name."""
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation={name!r}: expected one of {sorted(ACTIVATIONS)}") from None
