"""Weight initialization schemes for the `init` config group.

Every scheme but `default` re-draws the weights of each Conv2d and Linear layer and zeroes their
biases; BatchNorm layers keep PyTorch's init (weight 1, bias 0). `default` leaves PyTorch's init alone.
"""
from functools import partial

from torch import nn

SCHEMES = {
    "default": None,
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    # fan_in and the ReLU gain, as He et al. 2015.
    "kaiming_normal": partial(nn.init.kaiming_normal_, nonlinearity="relu"),
    "kaiming_uniform": partial(nn.init.kaiming_uniform_, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
}


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    if scheme not in SCHEMES:
        raise ValueError(f"init scheme {scheme!r}: expected one of {sorted(SCHEMES)}")
    draw = SCHEMES[scheme]
    if draw is None:
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            draw(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
