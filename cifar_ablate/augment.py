"""Training-time augmentation, random per image.

Two implementations of the same options: `BatchAugment` works on whole batches of tensors on the
training device (the default, fast path) and `torchvision_transform` builds the equivalent per-image
torchvision pipeline (the reference, used with `data.loader=torch`).
"""
import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_crop(x, padding, generator):
    """Zero-pad each image by `padding` pixels and cut a random crop of the original size from it."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing moves the indexed dims first: (b, h, w, c) → back to (b, c, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x, generator):
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_rotation(x, degrees, generator):
    """Rotate each image about its centre by an angle uniform in ±degrees (bilinear, zero fill)."""
    angle = _uniform(x.shape[0], -degrees, degrees, generator, x.device) * (math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grayscale(x):
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x, other, ratio):
    return (ratio[:, None, None, None] * x + (1 - ratio[:, None, None, None]) * other).clamp_(0, 1)


def color_jitter(x, brightness, contrast, saturation, generator):
    """torchvision's ColorJitter formulas with a factor per image, applied in a fixed order
    (brightness, contrast, saturation) where torchvision shuffles the order per image."""
    n, dev = x.shape[0], x.device
    if brightness:
        x = _blend(x, torch.zeros_like(x), _uniform(n, 1 - brightness, 1 + brightness, generator, dev))
    if contrast:
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = _blend(x, mean, _uniform(n, 1 - contrast, 1 + contrast, generator, dev))
    if saturation:
        x = _blend(x, _grayscale(x), _uniform(n, 1 - saturation, 1 + saturation, generator, dev))
    return x


class BatchAugment:
    """Applies the configured augmentations to a float batch in [0, 1], independently per image."""

    def __init__(self, crop_padding: int = 0, flip: bool = False, rotation: float = 0.0,
                 brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
        self.crop_padding, self.flip, self.rotation = crop_padding, flip, rotation
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.rotation or self.brightness
                    or self.contrast or self.saturation)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.rotation:
            x = random_rotation(x, self.rotation, generator)
        if self.brightness or self.contrast or self.saturation:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, generator)
        return x


def torchvision_transform(augment: BatchAugment, mean=None, std=None) -> v2.Compose:
    """The per-image torchvision pipeline for the same options, ending in a normalized float tensor."""
    steps = []
    if augment.crop_padding:
        steps.append(v2.RandomCrop(32, padding=augment.crop_padding))
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.rotation:
        steps.append(v2.RandomRotation(augment.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if augment.brightness or augment.contrast or augment.saturation:
        steps.append(v2.ColorJitter(augment.brightness, augment.contrast, augment.saturation))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)
