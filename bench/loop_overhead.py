"""Lightning's training loop against a bare loop, in one process, taking turns: what the loop itself costs.

Both train LeNet (SGD 0.01, momentum 0.9, batch 64) for --steps batches from the same normalized data,
built as `cifar_ablate.run` builds them (classifier, data module, trainer with the TensorBoard logger, no
checkpointing, no validation). Prints each pair's seconds and their ratio; times nothing else.

    python bench/loop_overhead.py --root data --steps 300 --pairs 5
"""
import argparse
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
from cifar_ablate import run  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    with initialize_config_dir(run.CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", ["model=lenet", "data.batch_size=64", "data.val_size=0", "trainer.limit_val_batches=0",
                                 "trainer.accelerator=cpu", f"trainer.limit_train_batches={args.steps}",
                                 "trainer.max_epochs=1", f"data.root={Path(args.root).resolve()}",
                                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    datamodule = run.build_datamodule(cfg)
    datamodule.load()
    images, labels = datamodule.splits["train"]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.data.mean, cfg.data.std))
    x_all = (images.float().div(255) - mean) / std

    def bare() -> float:
        L.seed_everything(0, verbose=False)
        model = run.build_classifier(cfg).model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        order = torch.randperm(len(x_all))
        start = time.perf_counter()
        for i in range(args.steps):
            idx = order[i * 64:(i + 1) * 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x_all.index_select(0, idx)), labels.index_select(0, idx)).backward()
            optimizer.step()
        return time.perf_counter() - start

    def lightning() -> float:
        L.seed_everything(0, verbose=False)
        progress = run.RunProgress(print_lines=False)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), logger=TensorBoardLogger(tmp),
                                  callbacks=[progress], default_root_dir=tmp, enable_checkpointing=False)
            trainer.fit(run.build_classifier(cfg), datamodule=datamodule)
        return progress.epoch_seconds[0]

    for _ in range(args.pairs):
        b, c = bare(), lightning()
        print(f"bare {b:.2f} s  lightning {c:.2f} s  ratio {c / b:.2f}", flush=True)


if __name__ == "__main__":
    main()
