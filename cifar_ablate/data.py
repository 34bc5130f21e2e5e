"""CIFAR-10: download, a safe reader for the python batches, the train/val/test split, and batches.

The reader accepts any tree in the official `cifar-10-batches-py` layout, also one whose files are not
the official bytes (a re-encoded copy), so it checks structure, not per-file checksums. The download
checks the official archive's MD5.

    python -m cifar_ablate.data stats --root data      # per-channel mean/std of the training set
    python -m cifar_ablate.data download --root data   # fetch the official archive
"""
import argparse
import math
import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cifar_ablate.augment import BatchAugment, torchvision_transform
from cifar_ablate.config import CIFAR10_MD5, CIFAR10_URL, MEAN, STD
from cifar_ablate.errors import ConfigError, DataError, exit_with_error

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches hold: builtins (dicts, lists, str, bytes, ints) and numpy arrays.

    A pickle can name any importable callable and run it on load; this refuses every other global.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only "
                                     "dicts, lists, strings, ints and uint8 arrays")


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file missing") from None
    except Exception as e:  # a truncated or garbled pickle raises any of a dozen types
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → images uint8 (N, 3, 32, 32) and labels int64 (N,), both checked."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: expected a dict with 'data' and 'labels'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {dtype} {shape}")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must be a list of ints") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, "
                        f"found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def batch_dir(root) -> Path:
    """The `cifar-10-batches-py` folder under `root` (or `root` itself if it is that folder)."""
    root = Path(root).expanduser()
    return root if (root / TRAIN_FILES[0]).exists() and not (root / BATCH_DIR).exists() else root / BATCH_DIR


def read_cifar10(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "test": (images, labels)} from a tree in the official layout."""
    folder = batch_dir(root)
    if not folder.is_dir():
        raise DataError(f"data.root={root}: no CIFAR-10 at {folder}; set data.download=true to fetch "
                        f"it, or point data.root at the folder that holds {BATCH_DIR}/")
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            "test": read_batch(folder / TEST_FILE)}


def download_cifar10(root, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Fetch and unpack the archive into `root` unless a tree is already there; the MD5 must match."""
    from torchvision.datasets.utils import download_and_extract_archive

    if (batch_dir(root) / TRAIN_FILES[0]).exists():
        return batch_dir(root)
    try:
        download_and_extract_archive(url, download_root=str(Path(root).expanduser()), md5=md5)
    except RuntimeError as e:  # torchvision's word for a checksum mismatch
        raise DataError(f"data.url={url}: download failed its MD5 check (expected {md5}): {e}") from None
    except OSError as e:
        raise DataError(f"data.url={url}: download failed: {e}") from None
    return batch_dir(root)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, 3, H, W), on the [0, 1] scale."""
    x = images.astype(np.float64) / 255
    return tuple(x.mean(axis=(0, 2, 3)).round(4).tolist()), tuple(x.std(axis=(0, 2, 3)).round(4).tolist())


def stream_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed for one random stream, e.g. (run seed, epoch, purpose)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def epoch_indices(n: int, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1):
    """The order one epoch visits a split in: a permutation seeded by (seed, epoch), or 0..n-1.

    With several processes each rank takes every world_size-th index, padded by wrap-around so all
    ranks see the same number (as torch's DistributedSampler).
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, epoch, 0)))
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = math.ceil(n / world_size)
        order = torch.cat([order, order[: per_rank * world_size - n]])[rank::world_size]
    return order


class _EpochPosition:
    """How many batches of which epoch a loader has served: what Lightning saves of a stateful loader in a
    checkpoint, so a resumed epoch skips what was served before it."""

    def _init_position(self):
        self.position = {"epoch": -1, "batches": 0}  # batches served so far in that epoch
        self._resume_at: Optional[dict] = None

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = dict(state)

    def _start_epoch(self, epoch: int) -> int:
        """Begin serving `epoch`; the number of its batches served before a checkpoint this loader resumes from."""
        resume_at, self._resume_at = self._resume_at, None
        skip = resume_at["batches"] if resume_at and resume_at["epoch"] == epoch else 0
        self.position = {"epoch": epoch, "batches": skip}
        return skip


class TensorBatches(_EpochPosition):
    """Batches of one split drawn from uint8 tensors that already sit on the training device.

    Every epoch: a seeded permutation, then per batch one gather, the batched augmentation and the
    normalization, all as tensor ops on the device; no per-image Python and no worker processes.
    Stateful for Lightning: a checkpoint saved mid-epoch records how many batches were served, and the
    resumed epoch skips them (replaying their augmentation draws) so it continues bit-identically.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                 augment: Optional[BatchAugment] = None, epoch: Callable[[], int] = lambda: 0,
                 rank: int = 0, world_size: int = 1):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment = augment if augment is not None and augment.active else None
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        shape = (1, 3, 1, 1)
        self.mean = None if mean is None else torch.tensor(mean, device=images.device).view(shape)
        self.std = None if std is None else torch.tensor(std, device=images.device).view(shape)
        self._init_position()

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.images) / self.world_size) / self.batch_size)

    def __iter__(self):
        epoch = self.epoch()
        skip = self._start_epoch(epoch)
        order = epoch_indices(len(self.images), self.shuffle, self.seed, epoch, self.rank, self.world_size)
        order = order.to(self.images.device)
        generator = None
        if self.augment is not None:
            generator = torch.Generator(device=self.images.device)
            generator.manual_seed(stream_seed(self.seed, epoch, 1))
        for batch, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start:start + self.batch_size]
            if batch < skip:  # served before the checkpoint: only advance the augmentation's generator
                if self.augment is not None:
                    self.augment(self.images.index_select(0, idx).float(), generator)
                continue
            # index_select copies whole images; indexing with [idx] goes element by element (15x slower on CPU).
            x = self.images.index_select(0, idx).float().mul_(1.0 / 255)  # the same arithmetic as torchvision's ToDtype
            labels = self.labels.index_select(0, idx)
            if self.augment is not None:
                x = self.augment(x, generator)
            if self.mean is not None:  # in place: x is this batch's own copy (0.1 ms less per LeNet batch on CPU)
                x = x.sub_(self.mean).div_(self.std)
            self.position["batches"] = batch + 1
            yield x, labels


class _ImageDataset(Dataset):
    """One image at a time through a torchvision transform: the reference pipeline.

    Indexed by (image, seed): the transform's random draws come from that image's own seed, not from the
    process's global RNG, so they are the same in the main process and in any worker, a resumed epoch
    replays them, and the global RNG (dropout's) is left as it was. seed None: the transform draws nothing.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        i, seed = item
        if seed is None:
            return self.transform(self.images[i]), self.labels[i]
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global CPU RNG
            torch.default_generator.manual_seed(seed)
            return self.transform(self.images[i]), self.labels[i]


class _EpochSampler(Sampler):
    """Yields (index, seed) in `epoch_indices` order, so the torchvision path visits images in the same order
    as the tensor path; each image's seed is drawn from (seed, epoch) (None when `seeded` is false).

    `skip` images at the start of the next epoch are left out: those a resumed epoch had already served.
    """

    def __init__(self, n, shuffle, seed, epoch, seeded=False, rank=0, world_size=1):
        self.n, self.shuffle, self.seed, self.epoch, self.seeded = n, shuffle, seed, epoch, seeded
        self.rank, self.world_size = rank, world_size
        self.skip = 0

    def __len__(self):
        return math.ceil(self.n / self.world_size)

    def __iter__(self):
        epoch = self.epoch()
        order = epoch_indices(self.n, self.shuffle, self.seed, epoch, self.rank, self.world_size).tolist()
        seeds = [None] * self.n
        if self.seeded:  # one per image, not per position: under DDP no two ranks share a draw
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 1))
            seeds = torch.randint(2 ** 62, (self.n,), generator=generator).tolist()
        skip, self.skip = self.skip, 0
        return iter([(i, seeds[i]) for i in order[skip:]])


class _ResumableDataLoader(_EpochPosition, DataLoader):
    """A DataLoader that, as TensorBatches, records how many batches of the epoch it served, so a checkpoint
    saved mid-epoch resumes after them (Lightning saves and restores this state for loaders that have it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_position()

    def __iter__(self):
        self.sampler.skip = self._start_epoch(self.sampler.epoch()) * self.batch_size
        for batch in super().__iter__():
            self.position["batches"] += 1
            yield batch


class CIFAR10DataModule(L.LightningDataModule):
    """Owns CIFAR-10 loading, the split, normalization and augmentation.

    `loader="tensor"` (default) keeps each split on the training device as uint8 and augments whole
    batches there; `loader="torch"` runs torchvision transforms per image in a DataLoader. With
    augmentation off both give the same batches for the same seed.
    """

    def __init__(self, root="data", download: bool = False, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                 batch_size: int = 64, eval_batch_size: int = 1000, val_size: int = 5000, split_seed: int = 0,
                 train_fraction: float = 1.0, normalize: bool = True, mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD, loader: str = "tensor", num_workers: int = 0,
                 augment: Optional[BatchAugment] = None, seed: int = 0):
        super().__init__()
        self.root, self.download, self.url, self.md5 = root, download, url, md5
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.train_fraction = val_size, split_seed, train_fraction
        self.mean, self.std = (tuple(mean), tuple(std)) if normalize else (None, None)
        self.loader, self.num_workers = loader, num_workers
        self.augment = augment or BatchAugment()
        self.seed = seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_data(self):
        if self.download:
            download_cifar10(self.root, self.url, self.md5)

    def load(self):
        """Read the batches and split them (on the CPU); idempotent. Raises DataError/ConfigError."""
        if self.splits:
            return
        arrays = read_cifar10(self.root)
        train_x, train_y = (torch.from_numpy(a) for a in arrays["train"])
        test = tuple(torch.from_numpy(a) for a in arrays["test"])
        n = len(train_x)
        if not 0 <= self.val_size < n:
            raise ConfigError(f"data.val_size={self.val_size}: must be in [0, {n}) for the {n} training "
                              f"images at {self.root} (0 validates on the test set)",
                              keys=("data.val_size", "data.train_fraction"))
        # The split depends on split_seed alone, so runs with different seeds validate on the same images.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(self.split_seed, 0, 2)))
        val_idx, train_idx = order[:self.val_size].sort().values, order[self.val_size:]
        train_idx = train_idx[:max(1, round(len(train_idx) * self.train_fraction))].sort().values
        self.splits = {"train": (train_x[train_idx], train_y[train_idx]),
                       "val": (train_x[val_idx], train_y[val_idx]) if self.val_size else test,
                       "test": test}

    @property
    def num_train_images(self) -> int:
        return len(self.splits["train"][0])

    def setup(self, stage=None):
        self.load()
        if self.loader == "tensor" and self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _batches(self, split: str, train: bool):
        images, labels = self.splits[split]
        batch_size = self.batch_size if train else self.eval_batch_size
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.loader == "tensor":
            return TensorBatches(images, labels, batch_size, shuffle=train, seed=self.seed, mean=self.mean,
                                 std=self.std, augment=self.augment if train else None,
                                 epoch=self._current_epoch, rank=rank, world_size=world)
        augment = self.augment if train else BatchAugment()
        sampler = _EpochSampler(len(images), train, self.seed, self._current_epoch, augment.active, rank, world)
        # Its own generator for the workers' base seed, which would otherwise be drawn from the global RNG
        # (once per epoch, or once with persistent workers): dropout's draws do not depend on num_workers.
        return _ResumableDataLoader(_ImageDataset(images, labels, torchvision_transform(augment, self.mean, self.std)),
                                    batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                                    persistent_workers=self.num_workers > 0,
                                    generator=torch.Generator().manual_seed(stream_seed(self.seed, 0, 4)))

    def train_dataloader(self):
        return self._batches("train", train=True)

    def val_dataloader(self):
        return self._batches("val", train=False)

    def test_dataloader(self):
        return self._batches("test", train=False)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar_ablate.data", description="CIFAR-10 data tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("stats", "print the training set's per-channel mean and std"),
                       ("download", "fetch the official archive (checks its MD5)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", default="data", help="folder holding (or to hold) cifar-10-batches-py")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            print(f"CIFAR-10 at {download_cifar10(args.root)}")
        else:
            if not batch_dir(args.root).is_dir():  # read_cifar10's advice names the run's config keys
                exit_with_error(f"--root {args.root}: no CIFAR-10 at {batch_dir(args.root)}; fetch it with "
                                f"python -m cifar_ablate.data download --root {args.root}")
            mean, std = channel_stats(read_cifar10(args.root)["train"][0])
            print(f"data.mean=[{','.join(map(str, mean))}] data.std=[{','.join(map(str, std))}]")
    except DataError as e:
        exit_with_error(e)


if __name__ == "__main__":
    main()
