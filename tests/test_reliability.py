"""Finished work is never lost or redone; interrupted work continues where it stopped."""
import json
import os
import subprocess
import sys

from cifar_ablate.run import fresh_dir
from conftest import FAST, REPO, run_cli

# Runs the CLI but SIGKILLs itself in the middle of epoch 2 (after 3 of its 8 batches).
KILL_MID_EPOCH = """
import os, signal, sys
from cifar_ablate import classifier
step = classifier.Classifier.training_step
def killing_step(self, batch, batch_idx):
    if self.current_epoch == 1 and batch_idx == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, batch_idx)
classifier.Classifier.training_step = killing_step
from cifar_ablate.run import main
main()
"""


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path, cifar_root):
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=3"]
    whole = run_cli(*args, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL_MID_EPOCH, *args, "hydra.run.dir=killed"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "metrics.json").exists()  # nothing that looks like a result
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()

    resumed = run_cli(*args, "hydra.run.dir=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr + resumed.stdout
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["epochs"] == 3
    assert (b["test_acc"], b["test_loss"], b["best_val_acc"]) == (a["test_acc"], a["test_loss"], a["best_val_acc"])


def test_rerunning_a_sweep_redoes_only_runs_without_a_result(tmp_path, cifar_root):
    args = ["-m", "seed=0,1,2", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    sweep = tmp_path / "sweep"
    before = {s: (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1, 2)}
    (sweep / "seed=1" / "metrics.json").unlink()
    (sweep / "seed=1" / "checkpoints" / "last.ckpt").unlink()
    failed = sweep / "seed=2" / "metrics.json"
    failed.write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom", "epoch": 0}))

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (sweep / "seed=0" / "metrics.json").stat().st_mtime_ns == before[0]  # not redone
    for s in (1, 2):
        assert json.loads((sweep / f"seed={s}" / "metrics.json").read_text())["status"] == "completed"
    assert "seed=0: already completed, skipping" in again.stderr + again.stdout
    assert "| seed=2 | completed |" in (sweep / "summary.md").read_text()


def test_dirs_started_in_the_same_second_never_collide(tmp_path):
    first, second = fresh_dir(str(tmp_path / "18-30-05")), fresh_dir(str(tmp_path / "18-30-05"))
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert second.endswith("18-30-05-2")


def test_a_checkpoint_from_another_model_or_truncated_is_refused_in_one_line(tmp_path, cifar_root):
    args = [f"data.root={cifar_root}", *FAST, "hydra.run.dir=run"]
    assert run_cli(*args, "model=lenet", cwd=tmp_path).returncode == 0
    (tmp_path / "run" / "metrics.json").unlink()  # as if interrupted after its last epoch

    other = run_cli(*args, "model=lenet_bn", cwd=tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}: saved by a different model or config")

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    truncated = run_cli(*args, "model=lenet", cwd=tmp_path)
    assert truncated.returncode == 2 and "Traceback" not in truncated.stderr
    assert "not a readable checkpoint" in truncated.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "metrics.json").exists()
