"""Side by side, one invocation: the homework loop, a bare in-memory loop, and cifar_ablate's default path.

All three train the same model (LeNet), optimizer (SGD 0.01, momentum 0.9), batch size, epochs and
seed, on the same 50,000 training images visited in the same order (cifar_ablate's seeded per-epoch
permutation), with no validation, then test on the 10,000 test images:

(a) homework: a Dataset that, like torchvision.datasets.CIFAR10, turns each image into a PIL image and
    through ToTensor + Normalize, fed by a DataLoader with 2 workers; the loss read with .item() each step;
(b) bare: the split already normalized as one float tensor in memory, sliced per batch (the floor);
(c) cifar_ablate: `python -m cifar_ablate` with its defaults (device-resident uint8 batches, TensorBoard
    logging, checkpointing), timed by its own metrics.json.

With --device cuda all three train on the GPU: (a) copies each batch there from the DataLoader, as the
homework did; (b) holds the normalized split there; (c) runs with trainer=gpu (bf16 mixed precision,
cuDNN autotuning, channels-last), while (a) and (b) stay in fp32 as the homework wrote them. So on a GPU
c/b mixes the framework's cost with those settings; a/c is the throughput a user gains.

    python bench/compare_loops.py --root data --epochs 3 --out docs/performance.md
    python bench/compare_loops.py --root data --epochs 3 --device cuda --out docs/performance.md
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cifar_ablate.data import MEAN, STD, epoch_indices, read_cifar10  # noqa: E402
from cifar_ablate.models import LeNet  # noqa: E402


class HomeworkCIFAR(Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does: HWC uint8 → PIL image → transform."""

    def __init__(self, images_chw: np.ndarray, labels: np.ndarray, transform):
        self.data = images_chw.transpose(0, 2, 3, 1)  # CIFAR10 keeps HWC
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


class FixedOrder(torch.utils.data.Sampler):
    """cifar_ablate's per-epoch permutation, so every loop sees the images in the same order."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(epoch_indices(self.n, True, self.seed, self.epoch).tolist())


def test_accuracy(model, x, y, batch=1000):
    model.eval()
    x, y = x.to(next(model.parameters()).device), y.to(next(model.parameters()).device)
    with torch.no_grad():
        correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def normalized(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().mul_(1 / 255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU's queued work is part of the epoch
    return time.perf_counter() - start


def homework_loop(data, args):
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    device = torch.device(args.device)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    sampler = FixedOrder(len(train_x), args.seed)
    loader = DataLoader(HomeworkCIFAR(train_x, train_y, transform), batch_size=args.batch_size, sampler=sampler,
                        num_workers=2)
    L.seed_everything(args.seed, verbose=False)
    model = LeNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    epoch_seconds = []
    for epoch in range(args.epochs):
        sampler.epoch = epoch
        model.train()
        start, running_loss = time.perf_counter(), 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        epoch_seconds.append(elapsed(start, device))
    return epoch_seconds, test_accuracy(model, normalized(test_x), torch.from_numpy(test_y))


def bare_loop(data, args):
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    device = torch.device(args.device)
    x_all, y_all = normalized(train_x).to(device), torch.from_numpy(train_y).to(device)
    L.seed_everything(args.seed, verbose=False)
    model = LeNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    epoch_seconds = []
    for epoch in range(args.epochs):
        model.train()
        start = time.perf_counter()
        order = epoch_indices(len(x_all), True, args.seed, epoch).to(device)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(x_all.index_select(0, idx)), y_all.index_select(0, idx)).backward()
            optimizer.step()
        epoch_seconds.append(elapsed(start, device))
    return epoch_seconds, test_accuracy(model, normalized(test_x), torch.from_numpy(test_y))


def run_cifar_ablate(overrides: list[str], out_dir: Path) -> tuple[float, list[dict], str]:
    """`python -m cifar_ablate <overrides>` into out_dir (the run dir of one run, or the sweep dir of a
    sweep): its wall time, the metrics.json of each of its runs, and the command as shown. Exits with the
    command's stderr when it fails or a run did not complete, so nothing partial becomes a figure."""
    if out_dir.exists():  # a sweep rerun into its dir would skip the runs already there
        sys.exit(f"error: {out_dir} exists; pass a new dir")
    command = [sys.executable, "-m", "cifar_ablate", *overrides, f"hydra.run.dir={out_dir}",
               f"hydra.sweep.dir={out_dir}"]
    shown = " ".join(command[1:-2])
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: `python {shown}` exited {result.returncode}:\n{result.stderr[-3000:]}")
    single = out_dir / "metrics.json"
    sweep = not single.exists()
    runs = [json.loads(p.read_text()) for p in (sorted(out_dir.glob("*/metrics.json")) if sweep else [single])]
    if not runs or any(r["status"] != "completed" for r in runs) or (sweep and not (out_dir / "summary.md").exists()):
        sys.exit(f"error: `python {shown}`: not every run completed; no figure written")
    return seconds, runs, shown


def cifar_ablate_overrides(args) -> list[str]:
    return ["model=lenet", "optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.9",
            f"data.batch_size={args.batch_size}", f"trainer.max_epochs={args.epochs}", f"seed={args.seed}",
            f"data.root={Path(args.root).resolve()}", "data.val_size=0", "trainer.limit_val_batches=0",
            "trainer=gpu" if args.device == "cuda" else "trainer.accelerator=cpu"]


def cifar_ablate_loop(data, args):
    """(c): its epochs as its own metrics.json times them; `data` is unused (it reads the files itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, (metrics,), _ = run_cifar_ablate(cifar_ablate_overrides(args), Path(tmp) / "run")
    return metrics["epoch_seconds"], metrics["test_acc"]


def machine(device: str = "cpu") -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f"{torch.cuda.get_device_name()}, " if device == "cuda" else ""
    return (f"{platform.node()}: {gpu}{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, help="markdown file to write the table into")
    args = parser.parse_args()

    data = read_cifar10(args.root)
    n = len(data["train"][0])
    # The three loops take turns, --repeats times, so drift in the machine's speed hits all of them alike.
    # Each loop's figures: the median of all its epochs, and the fastest epoch (least disturbed by other
    # work on the machine, as timeit reports the minimum).
    # Paired ratios: within one repeat the loops run a minute or two apart, so a slow spell of the machine
    # moves both sides of a repeat's ratio; their median over repeats is the least moved by one disturbed repeat.
    epochs = {"a": [], "b": [], "c": []}
    per_repeat = {"a": [], "b": [], "c": []}
    accuracy = {}
    for _ in range(args.repeats):
        for k, loop in (("a", homework_loop), ("b", bare_loop), ("c", cifar_ablate_loop)):
            seconds, accuracy[k] = loop(data, args)
            epochs[k] += seconds
            per_repeat[k].append(float(np.median(seconds)))
    names = {"a": "(a) homework loop: per-image PIL + torchvision transforms, DataLoader(2 workers)",
             "b": "(b) bare loop over pre-normalized tensors in memory",
             "c": "(c) cifar_ablate, default path (Lightning, TensorBoard, checkpoints)"}
    median = {k: float(np.median(epochs[k])) for k in "abc"}
    best = {k: min(epochs[k]) for k in "abc"}
    table = ["| loop | s / epoch (median) | s / epoch (fastest) | images / s (median) | test acc |",
             "|---|---|---|---|---|"]
    table += [f"| {names[k]} | {median[k]:.2f} | {best[k]:.2f} | {n / median[k]:,.0f} | {accuracy[k]:.4f} |"
              for k in "abc"]
    table += ["", "| ratio | median | fastest |", "|---|---|---|",
              f"| a/c: how much faster cifar_ablate is than the homework loop | {median['a'] / median['c']:.2f} "
              f"| {best['a'] / best['c']:.2f} |",
              f"| c/b: cifar_ablate's cost over the bare floor | {median['c'] / median['b']:.2f} "
              f"| {best['c'] / best['b']:.2f} |",
              "", "| ratio, per repeat (each repeat's median epochs) | repeats | median over repeats |",
              "|---|---|---|"]
    for num, den in (("a", "c"), ("c", "b")):
        ratios = [n_ / d_ for n_, d_ in zip(per_repeat[num], per_repeat[den])]
        table.append(f"| {num}/{den} | {', '.join(f'{r:.2f}' for r in ratios)} | {float(np.median(ratios)):.2f} |")
    table += ["", "Every epoch, in seconds: " + "; ".join(
                  f"({k}) " + ", ".join(f"{v:.2f}" for v in epochs[k]) for k in "abc") + "."]
    text = "\n".join(table)
    print(text)
    if args.out:
        where = f"GPU ({torch.cuda.get_device_name()})" if args.device == "cuda" else "CPU"
        header = (f"## {where}: LeNet, batch {args.batch_size}, {args.epochs} epochs x {args.repeats} repeats, "
                  f"seed {args.seed}, {n:,} training images\n\n"
                  "Seconds per epoch: the median and the fastest of all epochs of all repeats, the loops taking "
                  "turns; test accuracy is the last repeat's.\n"
                  f"Measured {datetime.date.today()} on {machine(args.device)}.\n"
                  f"Command: `python bench/compare_loops.py --root {args.root} --epochs {args.epochs} "
                  f"--batch-size {args.batch_size} --seed {args.seed} --repeats {args.repeats} "
                  f"--device {args.device} --out {args.out}`\n"
                  f"(c) ran as: `python -m cifar_ablate {' '.join(cifar_ablate_overrides(args))}`\n\n")
        write_section(args.out, header + text, marker=f"bench:{args.device}")


def write_section(path: Path, body: str, marker: str = "bench:cpu") -> None:
    """Replace this benchmark's block in the markdown file (or append it), keeping the rest as it is."""
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = f"{begin}\n{body}\n{end}"
    old = path.read_text() if path.exists() else "# Performance\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    main()
