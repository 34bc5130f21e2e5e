"""Operator dispatches per training step: cifar_ablate's step against the bare loop's, counted on the CPU.

On a GPU each dispatched operator is at least one kernel launch, and for models as small as LeNet the
host's dispatch time, not the GPU, sets the step time; this count is the CPU-measurable proxy for it.
Counts the top-level aten operators (those not called from inside another aten operator) that
torch.profiler records over --steps steps of LeNet at batch 64, for (b) the bare loop and (c) the
Lightning step as `cifar_ablate.run` builds it (TensorBoard logger, no checkpointing, no validation).

    python bench/op_count.py --root data --steps 100
"""
import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cifar_ablate import run  # noqa: E402


def top_level_ops(prof) -> collections.Counter:
    counts = collections.Counter()
    for event in prof.events():
        parent = event.cpu_parent
        if event.name.startswith("aten::") and not (parent is not None and parent.name.startswith("aten::")):
            counts[event.name] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--top", type=int, default=12, help="list the most frequent operators of each")
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
    x_all = (images.float().div(255) - mean) / std  # pre-normalized, as compare_loops.py's bare loop

    model = run.build_classifier(cfg).model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = torch.randperm(len(images))
    with profile(activities=[ProfilerActivity.CPU]) as bare:
        for i in range(args.steps):  # the bare loop as compare_loops.py runs it
            idx = order[i * 64:(i + 1) * 64]
            optimizer.zero_grad()
            F.cross_entropy(model(x_all.index_select(0, idx)), labels.index_select(0, idx)).backward()
            optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(OmegaConf.to_container(cfg.trainer, resolve=True), logger=TensorBoardLogger(tmp),
                              default_root_dir=tmp, enable_checkpointing=False)
        classifier = run.build_classifier(cfg)
        with profile(activities=[ProfilerActivity.CPU]) as lightning:
            trainer.fit(classifier, datamodule=datamodule)

    for label, prof in (("(b) bare loop", bare), ("(c) cifar_ablate", lightning)):
        counts = top_level_ops(prof)
        print(f"{label}: {sum(counts.values()) / args.steps:.1f} operators per step")
        for name, n in counts.most_common(args.top):
            print(f"  {n / args.steps:6.2f} {name}")


if __name__ == "__main__":
    main()
