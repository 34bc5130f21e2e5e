"""Explicit weight penalties (L1, L2, elastic net) added to the data loss.

The penalty covers the weights of Conv2d and Linear layers (not biases, not BatchNorm), or only the
layers named in `layers` (e.g. ["fc1"]). `squared=False` uses the unsquared L2 norm ‖w‖₂ in place
of Σw², as one homework does.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from cifar_ablate.errors import ConfigError


class WeightPenalty:
    def __init__(self, model: nn.Module, l1: float = 0.0, l2: float = 0.0, squared: bool = True,
                 layers: Optional[Sequence[str]] = None):
        self.l1, self.l2, self.squared = l1, l2, squared
        candidates = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        unknown = sorted(set(layers or ()) - set(candidates))
        if unknown:
            raise ConfigError(f"regularization.layers={list(layers)}: {type(model).__name__} has no layer "
                              f"{', '.join(unknown)}; its layers are {', '.join(candidates)}",
                              keys=("regularization.layers", "model"))
        chosen = candidates if layers is None else {name: candidates[name] for name in layers}
        self._weights = [m.weight for m in chosen.values()]

    @property
    def active(self) -> bool:
        return bool(self.l1 or self.l2)

    def __call__(self) -> torch.Tensor:
        total = self._weights[0].new_zeros(())
        for w in self._weights:
            if self.l1:
                total = total + self.l1 * w.abs().sum()
            if self.l2:
                total = total + self.l2 * (w.square().sum() if self.squared else w.norm(2))
        return total
