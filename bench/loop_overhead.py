"""Lightning's training loop against a bare loop, in one process, taking turns: what the loop itself costs.

Three loops train LeNet (SGD 0.01, momentum 0.9, batch 64) for --steps batches from the same data, taking
turns: the bare loop over pre-normalized tensors; Lightning with a minimal LightningModule (a training_step
of three lines, no metrics, no logging) over cifar_ablate's data module, which is Lightning's own floor; and
cifar_ablate's classifier, built as `cifar_ablate.training` builds it (trainer with the TensorBoard logger, no
checkpointing, no validation). Prints each round's seconds, the ratio to the bare loop and the milliseconds
per step each Lightning loop adds; times nothing else. With a tiny batch (--batch-size 2) the arithmetic shrinks and what is left
is mostly each step's host cost, the part that sets a small model's step time on a GPU.
`bench/op_count.py` runs the same two loops under torch.profiler.

    python bench/loop_overhead.py --root data --steps 300 --pairs 5
    python bench/loop_overhead.py --root data --steps 1000 --pairs 5 --batch-size 2
    python bench/loop_overhead.py --root data --steps 1000 --batch-size 2 --profile   # where the fit's time goes
"""
import argparse
import collections
import contextlib
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cifar_ablate import config, training  # noqa: E402
from compare_loops import normalized  # noqa: E402


def lenet_setup(root: str, steps: int, batch_size: int = 64):
    """LeNet's config for `steps` training batches of `batch_size` on the CPU, its data module (loaded), and the training
    split pre-normalized for the bare loop, as compare_loops.py's: (cfg, datamodule, images, labels)."""
    with initialize_config_dir(config.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["model=lenet", f"data.batch_size={batch_size}", "data.val_size=0", "trainer.limit_val_batches=0",
                                 "trainer.accelerator=cpu", f"trainer.limit_train_batches={steps}",
                                 "trainer.max_epochs=1", f"data.root={Path(root).resolve()}",
                                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    datamodule = training.build_datamodule(cfg)
    datamodule.load()
    images, labels = datamodule.splits["train"]
    return cfg, datamodule, normalized(images.numpy()), labels


def bare_loop(cfg, images, labels, steps: int):
    """A seeded LeNet and SGD, and a function that trains them for `steps` batches (what the caller measures)."""
    L.seed_everything(0, verbose=False)
    model = training.build_classifier(cfg).model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(len(images))

    def train():
        for i in range(steps):
            idx = order[i * cfg.data.batch_size:(i + 1) * cfg.data.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(images.index_select(0, idx)), labels.index_select(0, idx)).backward()
            optimizer.step()
    return train


class MinimalModule(L.LightningModule):
    """The least a LightningModule needs: Lightning's loop with nothing of cifar_ablate's step in it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def lightning_fit(cfg, datamodule, callbacks=(), around=None, minimal: bool = False) -> None:
    """cifar_ablate's Lightning fit of the same config (`minimal`: the same seeded model in MinimalModule);
    `around` (e.g. a profiler) wraps only `fit`."""
    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), logger=TensorBoardLogger(tmp),
                              callbacks=list(callbacks), default_root_dir=tmp, enable_checkpointing=False)
        classifier = training.build_classifier(cfg)
        module = MinimalModule(classifier.model) if minimal else classifier
        with around if around is not None else contextlib.nullcontext():
            trainer.fit(module, datamodule=datamodule)


def profile_by_package(cfg, datamodule, steps: int, top: int = 12) -> None:
    """Print cProfile's own time (tottime) per training step, summed by the package the code lives in
    (lightning, torch/nn, ...; C functions by name). cProfile slows Python code more than C code."""
    profiler = cProfile.Profile()
    lightning_fit(cfg, datamodule, around=profiler)
    totals = collections.Counter()
    for (file, _, name), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():
        if "site-packages/" in file:
            parts = file.split("site-packages/")[1].split("/")
            key = "/".join(parts[:2]) if parts[0] == "torch" else parts[0]
        else:
            key = name if file == "~" else "/".join(Path(file).parts[-2:])
        totals[key] += own
    for key, seconds in totals.most_common(top):
        print(f"{seconds / steps * 1e3:7.3f} ms/step  {key}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=5, help="rounds of the three loops")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--profile", action="store_true",
                        help="instead: one Lightning fit under cProfile, own time per step summed by package")
    args = parser.parse_args()
    cfg, datamodule, images, labels = lenet_setup(args.root, args.steps, args.batch_size)

    def bare() -> float:
        train = bare_loop(cfg, images, labels, args.steps)
        start = time.perf_counter()
        train()
        return time.perf_counter() - start

    def lightning(minimal: bool) -> float:
        progress = training.RunProgress(print_lines=False)
        lightning_fit(cfg, datamodule, callbacks=[progress], minimal=minimal)
        return progress.epoch_seconds[0]

    if args.profile:
        profile_by_package(cfg, datamodule, args.steps)
        return
    for _ in range(args.pairs):
        b, m, c = bare(), lightning(minimal=True), lightning(minimal=False)
        print(f"bare {b:.2f} s  lightning, minimal module {m:.2f} s (x{m / b:.2f}, "
              f"+{(m - b) / args.steps * 1e3:.2f} ms/step)  cifar_ablate {c:.2f} s (x{c / b:.2f}, "
              f"+{(c - b) / args.steps * 1e3:.2f} ms/step)", flush=True)


if __name__ == "__main__":
    main()
