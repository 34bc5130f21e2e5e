"""Data-parallel training (trainer=ddp): 2 gloo processes on the CPU, one run alone and a sweep of two."""
import csv
import json
from pathlib import Path

import pytest

from conftest import FAST, made_once, process_record, run_cli

DDP = ["trainer=ddp", "trainer.devices=2", *FAST, "trainer.max_epochs=2"]  # FAST: accelerator=cpu, so gloo

# Runs the CLI; every training step appends which process trained on which images to rank<N>.jsonl, and every
# validation batch its loss and size to val_rank<N>.jsonl. A script file, not -c: spawned workers import the main
# script again (as __mp_main__, so the guard keeps them from running main) and the patch reaches them.
RECORD_RANKS = '''
import hashlib, json, os
import torch.nn.functional as F
from cifar_ablate import classifier
step, evaluate = classifier.Classifier.training_step, classifier.Classifier._evaluate
def counting_step(self, batch, batch_idx):
    with open(f"rank{self.global_rank}.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "epoch": self.current_epoch,
                            "images": [hashlib.md5(x.numpy().tobytes()).hexdigest() for x in batch[0]]}) + "\\n")
    return step(self, batch, batch_idx)
def recording(self, batch, stage, accuracy):
    if stage == "val":
        x, y = batch
        with open(f"val_rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": self.current_epoch, "loss": float(F.cross_entropy(self(x), y)),
                                "n": len(y)}) + "\\n")
    return evaluate(self, batch, stage, accuracy)
classifier.Classifier.training_step, classifier.Classifier._evaluate = counting_step, recording
if __name__ == "__main__":
    from cifar_ablate.run import main
    main()
'''


@pytest.fixture
def ddp_run(tmp_path_factory, cifar_root):
    """One 2-process run with the CSV logger, made once for the tests of what it did (it starts 3 processes)."""
    def make(cwd):
        (cwd / "record_ranks.py").write_text(RECORD_RANKS)
        return process_record(run_cli(f"data.root={cifar_root}", *DDP, "logger=csv", "data.eval_batch_size=10",
                                      "hydra.run.dir=run", cwd=cwd, file=Path("record_ranks.py"), fresh=True))
    cwd, result = made_once(tmp_path_factory, "ddp_run", make)
    assert result["returncode"] == 0, result["stderr"][-3000:]
    return cwd, result


RUN_FILES = {".hydra", "checkpoints", "hparams.yaml", "metrics.json", "run.log", "run_config.json"}


def run_files(run_dir):
    return {p.name for p in run_dir.iterdir() if not p.name.startswith("events.out.tfevents.")}


def test_a_ddp_run_trains_on_both_processes_with_disjoint_halves_and_reports_once(ddp_run):
    tmp_path, result = ddp_run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.jsonl", "rank1.jsonl", "record_ranks.py", "run",
                                                          "val_rank0.jsonl", "val_rank1.jsonl"]
    assert run_files(tmp_path / "run") == RUN_FILES | {"metrics.csv"}
    assert result["stdout"].count("epoch 1/2 ") == 1  # epoch lines from rank 0 only
    assert "sync_dist=True" not in result["stderr"]  # every epoch value is reduced over both processes

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Counted in the workers and brought back to the process that writes metrics.json.
    assert (metrics["status"], metrics["epochs"], len(metrics["epoch_seconds"])) == ("completed", 2, 2)
    # Both processes' images: 250 per epoch, 2 epochs (train_seconds is stored rounded to ms).
    assert metrics["images_per_second"] == pytest.approx(2 * 250 / metrics["train_seconds"], rel=0.02)
    assert round(metrics["test_acc"] * 50, 4) % 1 == 0  # tested on exactly the 50 test images, none twice

    steps = {r: [json.loads(line) for line in open(tmp_path / f"rank{r}.jsonl")] for r in (0, 1)}
    assert len({s["pid"] for s in steps[0]} | {s["pid"] for s in steps[1]}) == 2  # one process per rank
    for epoch in (0, 1):
        seen = [[h for s in steps[r] if s["epoch"] == epoch for h in s["images"]] for r in (0, 1)]
        assert [len(s) for s in seen] == [125, 125] and len(set(seen[0] + seen[1])) == 250  # 300 - 50 val
        assert [sum(s["epoch"] == epoch for s in steps[r]) for r in (0, 1)] == [4, 4]  # 8 batches of 32, split


def test_a_ddp_sweep_runs_once_with_one_dir_and_result_per_trial(tmp_path, cifar_root):
    result = run_cli("-m", "seed=0,1", f"data.root={cifar_root}", *DDP, "hydra.sweep.dir=sweep", cwd=tmp_path,
                     fresh=True)  # Lightning starts the other process from this one's argv
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Launching 2 jobs") == 1  # no worker re-ran the sweep
    assert [p.name for p in tmp_path.iterdir()] == ["sweep"]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]
    for seed in (0, 1):
        assert run_files(sweep / f"seed={seed}") == RUN_FILES
        metrics = json.loads((sweep / f"seed={seed}" / "metrics.json").read_text())
        assert (metrics["status"], metrics["seed"], metrics["epochs"]) == ("completed", seed, 2)
    assert [r["run"] for r in csv.DictReader(open(sweep / "runs.csv"))] == ["seed=0", "seed=1"]


def test_several_devices_with_lightnings_default_ddp_are_refused(tmp_path, cifar_root):
    result = run_cli(f"data.root={cifar_root}", *FAST, "trainer.devices=2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: trainer.devices=2 with trainer.strategy=auto: Lightning's DDP re-runs the whole command")


def test_a_ddp_run_with_the_csv_logger_keeps_the_workers_curves(ddp_run):
    """The worker logs training and validation, the parent process the test: both go to one metrics.csv."""
    from cifar_ablate.report import read_curves
    tmp_path, _ = ddp_run
    curves = read_curves(tmp_path / "run")
    assert [len(curves[t]) for t in ("val/acc", "train/loss_epoch")] == [2, 2]
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert sum(1 for r in rows if r.get("test/acc")) == 1


def test_a_ddp_runs_validation_loss_is_the_mean_over_both_processes_images(ddp_run):
    tmp_path, _ = ddp_run
    batches = [json.loads(line) for r in (0, 1) for line in open(tmp_path / f"val_rank{r}.jsonl")]
    logged = [float(r["val/loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r.get("val/loss")]
    for epoch in (0, 1):
        mine = [b for b in batches if b["epoch"] == epoch]
        assert sum(b["n"] for b in mine) == 50  # the 50 validation images, split between the processes
        expected = sum(b["loss"] * b["n"] for b in mine) / 50
        assert logged[epoch] == pytest.approx(expected, rel=1e-5)


def test_a_ddp_run_with_the_torchvision_loader_also_gives_each_process_half_of_every_epoch(tmp_path, cifar_root):
    """data.loader=torch shards its own sampler's order; a DistributedSampler around it would halve each half."""
    (tmp_path / "record_ranks.py").write_text(RECORD_RANKS)
    result = run_cli(f"data.root={cifar_root}", *DDP, "data.loader=torch", "augment=crop_flip", "hydra.run.dir=run",
                     cwd=tmp_path, file=Path("record_ranks.py"), fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = {r: [json.loads(line) for line in open(tmp_path / f"rank{r}.jsonl")] for r in (0, 1)}
    for epoch in (0, 1):
        seen = [[h for s in steps[r] if s["epoch"] == epoch for h in s["images"]] for r in (0, 1)]
        assert [len(s) for s in seen] == [125, 125] and len(set(seen[0] + seen[1])) == 250
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["images_per_second"] == pytest.approx(2 * 250 / metrics["train_seconds"], rel=0.02)
