"""Finished work is never lost or redone; interrupted work continues where it stopped."""
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from hydra.types import RunMode

from cifar_ablate.errors import UserError
from cifar_ablate.report import read_curves
from cifar_ablate.run import fresh_dir, resume_overrides
from conftest import FAST, REPO, made_once, process_record, run_cli

# Runs the CLI but sends itself STOP_SIGNAL in the middle of epoch 2 (in batch 3 of 8).
SIGNAL_MID_EPOCH = """
import os, signal
from cifar_ablate import classifier
step = classifier.Classifier.training_step
def signalling_step(self, batch, batch_idx):
    if self.current_epoch == 1 and batch_idx == 3:
        os.kill(os.getpid(), getattr(signal, os.environ["STOP_SIGNAL"]))
    return step(self, batch, batch_idx)
classifier.Classifier.training_step = signalling_step
from cifar_ablate.run import main
main()
"""


@pytest.fixture
def uninterrupted(tmp_path_factory, cifar_root):
    """Dropout and augmentation draw random numbers every step: a resumed run must replay them exactly."""
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=3", "model=lenet_dropout", "augment=crop_flip"]

    def make(cwd):
        return process_record(run_cli(*args, "hydra.run.dir=whole", cwd=cwd))
    cwd, whole = made_once(tmp_path_factory, "uninterrupted", make)  # one run for the tests that compare with it
    assert whole["returncode"] == 0, whole["stderr"]
    return args, cwd / "whole"


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path, uninterrupted):
    args, whole = uninterrupted
    killed = run_cli(*args, "hydra.run.dir=killed", cwd=tmp_path, script=SIGNAL_MID_EPOCH,
                     env={"STOP_SIGNAL": "SIGKILL"})
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "metrics.json").exists()  # nothing that looks like a result
    assert (tmp_path / "killed" / "checkpoints" / "last.ckpt").exists()

    resumed = run_cli(*args, "hydra.run.dir=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr + resumed.stdout
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert b["epochs"] == 3
    # Times and images cover the whole run, the epoch trained before the kill included (the killed part of
    # epoch 2 is redone, so it is not counted).
    assert (len(b["epoch_seconds"]), b["images_trained"]) == (3, a["images_trained"]) == (3, 3 * 250)
    assert b["train_seconds"] > b["epoch_seconds"][0] + b["epoch_seconds"][1]
    assert b["images_per_second"] == pytest.approx(3 * 250 / b["train_seconds"], rel=0.02)
    assert (b["test_acc"], b["test_loss"], b["best_val_acc"]) == (a["test_acc"], a["test_loss"], a["best_val_acc"])


def test_a_run_stopped_after_its_last_epoch_counts_its_epochs_and_time_when_rerun(tmp_path, cifar_root):
    """Killed while testing: the rerun has no epoch left to train; its record takes the checkpoint's counts."""
    args = [f"data.root={cifar_root}", *FAST, "hydra.run.dir=run"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (tmp_path / "run" / "metrics.json").unlink()
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (again["epochs"], again["images_trained"], len(again["epoch_seconds"])) == (1, 250, 1)
    assert 0 < again["train_seconds"] <= first["train_seconds"]
    assert again["images_per_second"] == pytest.approx(250 / again["train_seconds"], rel=0.02)
    assert again["test_acc"] == first["test_acc"]


def test_a_run_validating_every_few_epochs_still_checkpoints_every_epoch(tmp_path, cifar_root):
    """Killed in epoch 2 of a run that validates every 2 epochs, it continues from epoch 1's end."""
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2",
            "model=lenet_dropout"]
    whole = run_cli(*args, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    killed = run_cli(*args, "hydra.run.dir=killed", cwd=tmp_path, script=SIGNAL_MID_EPOCH,
                     env={"STOP_SIGNAL": "SIGKILL"})
    assert killed.returncode == -9
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0  # taken at the end of epoch 1, which did not validate
    resumed = run_cli(*args, "hydra.run.dir=killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert (b["test_acc"], b["test_loss"], b["best_val_acc"]) == (a["test_acc"], a["test_loss"], a["best_val_acc"])
    assert read_curves(tmp_path / "killed") == read_curves(tmp_path / "whole")


def test_a_run_with_the_torchvision_loader_stopped_mid_epoch_resumes_bit_identically(tmp_path, cifar_root):
    """data.loader=torch records how far into the epoch it got, and its augmentation draws come from per-image
    seeds: the resumed run continues with the next batch and ends where the uninterrupted one did."""
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=3", "model=lenet_dropout", "augment=crop_flip",
            "data.loader=torch"]
    whole = run_cli(*args, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path, script=SIGNAL_MID_EPOCH,
                      env={"STOP_SIGNAL": "SIGTERM"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    resumed = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stdout + resumed.stderr  # Lightning's warning for a loader without state
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert (b["test_acc"], b["test_loss"], b["best_val_acc"]) == (a["test_acc"], a["test_loss"], a["best_val_acc"])
    assert read_curves(tmp_path / "stopped")["train/loss_epoch"] == read_curves(tmp_path / "whole")["train/loss_epoch"]


@pytest.mark.parametrize("signame, how", [("SIGTERM", "same command"), ("SIGUSR1", "resume="),
                                          ("SIGINT", None)])  # SIGINT takes SIGUSR1's route: save only
def test_a_run_stopped_by_a_signal_saves_mid_epoch_and_resumes_bit_identically(tmp_path, uninterrupted, signame,
                                                                              how):
    args, whole = uninterrupted
    stopped = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path, script=SIGNAL_MID_EPOCH,
                      env={"STOP_SIGNAL": signame})
    signum = getattr(signal, signame)
    assert stopped.returncode == 128 + signum, stopped.stderr[-2000:]
    run_dir = tmp_path / "stopped"
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"{run_dir}: stopped by {signame} in epoch 2 (1 finished); {run_dir / 'checkpoints' / 'last.ckpt'} saved; "
        f"to continue: python -m cifar_ablate resume={run_dir}")
    assert "Received SIGTERM" not in stopped.stdout + stopped.stderr  # Lightning's word for it, wrong for SIGINT
    interrupted = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert (interrupted["status"], interrupted["signal"], interrupted["epoch"]) == ("interrupted", signame, 1)
    saved = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 4  # mid-epoch

    if how is None:
        return
    if how == "resume=":  # the run's own overrides are read back from its dir
        resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    else:
        resumed = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "exists and is not empty" not in resumed.stdout + resumed.stderr  # the run's own checkpoint dir
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert b["status"] == "completed" and b["epochs"] == 3
    assert (b["test_acc"], b["test_loss"], b["best_val_acc"]) == (a["test_acc"], a["test_loss"], a["best_val_acc"])
    # Times and images cover the whole run: the part of epoch 2 before the signal counts in that epoch's time.
    assert (len(b["epoch_seconds"]), b["images_trained"]) == (3, a["images_trained"]) == (3, 3 * 250)
    before = saved["callbacks"]["RunProgress"]
    assert before["epoch_seconds_so_far"] > 0 and len(before["epoch_seconds"]) == 1
    assert b["epoch_seconds"][1] > before["epoch_seconds_so_far"] and b["train_seconds"] > before["train_seconds"]
    assert b["images_per_second"] == pytest.approx(3 * 250 / b["train_seconds"], rel=0.02)
    # The interrupted epoch's training loss covers all its batches, those before the signal included.
    assert read_curves(tmp_path / "stopped")["train/loss_epoch"] == read_curves(whole)["train/loss_epoch"]


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_a_resumed_run_keeps_the_curves_it_logged_before_the_stop_in_metrics_csv(tmp_path, cifar_root, signame):
    """logger=csv: the resuming process adds to metrics.csv, so the report's curves cover every epoch once."""
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=3", "logger=csv"]
    whole = run_cli(*args, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path, script=SIGNAL_MID_EPOCH, env={"STOP_SIGNAL": signame})
    assert stopped.returncode in (-9, 143), stopped.stderr[-2000:]
    resumed = run_cli(*args, "hydra.run.dir=stopped", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    curves = read_curves(tmp_path / "stopped")
    assert [len(curves[t]) for t in ("val/acc", "train/loss_epoch")] == [3, 3]
    assert curves == read_curves(tmp_path / "whole")


def test_a_run_started_over_in_its_dir_keeps_no_rows_of_the_earlier_attempt(tmp_path, cifar_root):
    """Deleting the checkpoint starts the run over (what a refused checkpoint's message advises)."""
    args = [f"data.root={cifar_root}", *FAST, "trainer.max_epochs=2", "logger=csv", "hydra.run.dir=run"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    (tmp_path / "run" / "metrics.json").unlink()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [len(v) for v in read_curves(tmp_path / "run").values()] == [2, 2, 2]


def test_resume_expands_to_the_runs_own_overrides_into_its_dir(tmp_path, compose_config):
    run_dir = tmp_path / "sweep" / "model=lenet_bn,seed=1"  # a sweep's run dir: '=' and ',' in its name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=lenet_bn\n- seed=1\n- data.root=/old\n")
    args = resume_overrides([f"resume={run_dir}", "data.root=/new", "trainer.accelerator=cpu"])
    cfg = compose_config([a for a in args if not a.startswith("hydra.run.dir")], return_hydra_config=True)
    assert (cfg.hydra.mode, cfg.model.batch_norm, cfg.seed, cfg.data.root) == (RunMode.RUN, True, 1, "/new")
    cfg = compose_config(args, return_hydra_config=True)
    assert cfg.hydra.run.dir == str(run_dir)
    # A later command into the dir (a refused sweep rerun) rewrote .hydra/: what the run computes comes from the
    # overrides it started with (run_config.json), where and how it runs from the latest command.
    (run_dir / "run_config.json").write_text(json.dumps({"(overrides)": ["model=lenet_bn", "seed=1", "data.root=/old"]}))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=lenet\n- seed=1\n- trainer.max_epochs=2\n"
                                                       "- data.root=/newer\n")
    args = resume_overrides([f"resume={run_dir}"])
    assert args[:3] == ["model=lenet_bn", "seed=1", "data.root=/newer"] and "trainer.max_epochs=2" not in args
    # The run's own value may be given again (a command line reused); another one is refused.
    assert resume_overrides([f"resume={run_dir}", "model=lenet_bn"]).count("model=lenet_bn") == 1
    with pytest.raises(UserError, match="so model=lenet cannot be given"):
        resume_overrides([f"resume={run_dir}", "model=lenet"])


def test_a_sweeps_run_continued_alone_keeps_its_place_in_the_report(tmp_path, cifar_root):
    """The first variant is the default baseline. A single run into a sweep's run dir made Hydra rewrite its
    .hydra/hydra.yaml without a job number, so the report moved that run last and compared against another."""
    args = [f"data.root={cifar_root}", *FAST]
    assert run_cli("-m", "model=lenet,lenet_bn", *args, "hydra.sweep.dir=sweep", cwd=tmp_path).returncode == 0
    record = tmp_path / "sweep" / "model=lenet" / ".hydra" / "hydra.yaml"
    assert run_cli("resume=sweep/model=lenet", cwd=tmp_path).returncode == 0  # completed: skipped
    assert "    num: 0\n" in record.read_text()
    # A run that never wrote its metrics.json (killed at its end), continued by hand: it records job 0 itself.
    (tmp_path / "sweep" / "model=lenet" / "metrics.json").unlink()
    spelled = run_cli("model=lenet", *args, "hydra.run.dir='sweep/model=lenet'", cwd=tmp_path)
    assert spelled.returncode == 0, spelled.stderr[-2000:]
    assert "    num: 0\n" in record.read_text()
    assert json.loads((tmp_path / "sweep" / "model=lenet" / "metrics.json").read_text())["job_num"] == 0
    report = run_cli("sweep", cwd=tmp_path, module="cifar_ablate.report")
    assert report.returncode == 0, report.stderr
    with open(tmp_path / "sweep" / "summary.csv") as f:
        assert [(r["variant"], r["baseline"]) for r in csv.DictReader(f)] == [("model=lenet", "True"),
                                                                            ("model=lenet_bn", "False")]


@pytest.mark.parametrize("args, message", [
    (["resume=nowhere"], "error: resume=nowhere: not a run dir (no nowhere/.hydra/overrides.yaml); "),
    (["resume=run", "model=lenet"], "error: resume=run: continues with the run's own config, so model=lenet "
                                    "cannot be given; only where and how it runs may change ("),
    (["-m", "resume=run"], "error: resume=run: continues one run; to continue a sweep, rerun its command with "
                           "hydra.sweep.dir=<its dir>"),
])
def test_resume_refuses_what_would_not_continue_the_run(tmp_path, args, message):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- model=lenet_bn\n")
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith(message)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "nowhere").exists()


def test_rerunning_a_sweep_redoes_only_runs_without_a_result(tmp_path, cifar_root):
    args = ["-m", "seed=0,1,2", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    sweep = tmp_path / "sweep"
    before = {s: (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns for s in (0, 1, 2)}
    shutil.rmtree(sweep / "seed=1")  # as the skip line says, to train it again
    failed = sweep / "seed=2" / "metrics.json"
    failed.write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom", "epoch": 0}))

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (sweep / "seed=0" / "metrics.json").stat().st_mtime_ns == before[0]  # not redone
    for s in (1, 2):
        assert json.loads((sweep / f"seed={s}" / "metrics.json").read_text())["status"] == "completed"
    assert "seed=0: already completed, skipping (delete its dir to train it again)" in again.stderr + again.stdout
    assert "| seed=2 | completed |" in (sweep / "summary.md").read_text()
    # seed=1 trained again from nothing: one epoch of curves.
    assert [len(read_curves(sweep / f"seed={s}")["val/acc"]) for s in (0, 1, 2)] == [1, 1, 1]


def test_the_report_of_a_sweep_stopped_before_some_runs_started_names_them(tmp_path, cifar_root):
    """Runs that never started have no dir: only the sweep's multirun.yaml tells that the study is incomplete."""
    args = ["-m", "model=lenet,lenet_bn", "seed=0,1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    sweep = tmp_path / "sweep"
    assert "Note:" not in (sweep / "summary.md").read_text()
    for name in ("model=lenet,seed=1", "model=lenet_bn,seed=0", "model=lenet_bn,seed=1"):
        shutil.rmtree(sweep / name)  # as the sweep leaves them when stopped in its first run
    report = run_cli(str(sweep), module="cifar_ablate.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    summary = (sweep / "summary.md").read_text()
    assert (f"Note: 3 of the runs the sweep's last command planned (multirun.yaml) have not started, so this study "
            f"is incomplete: model=lenet,seed=1, model=lenet_bn,seed=0, model=lenet_bn,seed=1; rerun its command with "
            f"hydra.sweep.dir={sweep} to run them.") in summary
    assert "One seed per variant" not in summary and "test_acc (mean ± std)" in summary  # 2 seeds were planned


def test_a_sweep_rerun_into_its_dir_with_another_setting_is_refused_and_leaves_the_results(tmp_path, cifar_root):
    """Run names hold only what varies: without the check, trainer.max_epochs=2 would skip the 1-epoch runs
    and the report would show their results under the new setting."""
    args = ["-m", "seed=0,1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    before = (tmp_path / "sweep" / "seed=0" / "metrics.json").read_text()
    changed = run_cli(*args, "trainer.max_epochs=2", cwd=tmp_path)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert changed.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'sweep' / 'seed=0'}: holds a run of another config (trainer.max_epochs: 1 there, 2 now); "
        "use a new run or sweep dir, or delete this run's dir to train it with this config")
    assert (tmp_path / "sweep" / "seed=0" / "metrics.json").read_text() == before
    other_option = run_cli(*args, "optimizer=adam", cwd=tmp_path)  # named as typed, not by the keys it sets
    assert other_option.returncode == 2
    assert other_option.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'sweep' / 'seed=0'}: holds a run of another config (optimizer: sgd there, adam now); ")
    # Hydra rewrote the run's .hydra/ with each refused command's overrides before the check: resume= still
    # continues the run as it started, not as a refused command asked for it.
    resumed = run_cli(f"resume={tmp_path / 'sweep' / 'seed=0'}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "seed=0: already completed, skipping" in resumed.stdout + resumed.stderr
    # A refused command's plan is not the study's: Hydra had rewritten multirun.yaml with its 4 seeds, and the
    # report then called the 2-seed study incomplete.
    more_seeds = run_cli("-m", "seed=0,1,2,3", *args[2:], "trainer.max_epochs=2", cwd=tmp_path)
    assert more_seeds.returncode == 2
    report = run_cli(str(tmp_path / "sweep"), module="cifar_ablate.report", cwd=tmp_path)
    assert report.returncode == 0 and "have not started" not in report.stdout
    # Where and how it runs may change: the same sweep with another data.root spelling still skips its runs.
    again = run_cli(*args[:2], f"data.root={cifar_root}/.", *args[3:], cwd=tmp_path)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already completed, skipping") == 2


def test_seeds_added_to_a_one_seed_sweep_with_a_setting_changed_are_refused(tmp_path, cifar_root):
    """The new runs get new names (model=lenet,seed=0 beside model=lenet), so the check of each run's own dir
    passes; the report would count the old 1-epoch run and the new 2-epoch runs as one variant."""
    args = [f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    assert run_cli("-m", "model=lenet,lenet_bn", *args, cwd=tmp_path).returncode == 0
    changed = run_cli("-m", "model=lenet,lenet_bn", "seed=0,1", *args, "trainer.max_epochs=2", cwd=tmp_path)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert changed.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'sweep' / 'model=lenet'}: a run of this variant with another config (trainer.max_epochs: "
        "1 there, 2 now), which the report would count with this one; use a new sweep dir, or delete that run's dir")
    assert not (tmp_path / "sweep" / "model=lenet,seed=0" / "metrics.json").exists()
    # A single run put into the sweep dir by hand as another seed of the variant is compared with it too.
    by_hand = run_cli("model=lenet", "seed=5", *args[:-1], "trainer.max_epochs=2",
                      "hydra.run.dir='sweep/model=lenet,seed=5'", cwd=tmp_path)
    assert by_hand.returncode == 2 and by_hand.stderr.startswith(
        f"error: {tmp_path / 'sweep' / 'model=lenet'}: a run of this variant with another config (trainer.max_epochs")


def test_a_run_an_earlier_command_left_without_a_result_is_listed_but_does_not_fail_this_sweep(tmp_path, cifar_root):
    """The report covers the whole sweep dir; the exit status only the runs this command launched. A one-seed
    sweep's failed run, beside the seeds added later under new names, made every rerun exit 1."""
    args = [f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep"]
    first = run_cli("-m", "optimizer.lr=0.01,0", *args, cwd=tmp_path)  # lr 0 fails its run alone
    assert first.returncode == 1 and "error: 1 of 2 runs did not complete: optimizer.lr=0 (failed)" in first.stderr
    again = run_cli("-m", "optimizer.lr=0.01,0.02", "seed=0,1", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.strip().splitlines()[-1] == (
        "note: runs in sweep that this command does not run, without a result (continue or delete them): "
        "optimizer.lr=0 (failed)")
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "Runs without a result: optimizer.lr=0 (failed" in summary
    # The seeds were added with the settings unchanged: seed 0, trained again under its new name, counts once.
    assert "| optimizer.lr=0.01 | completed | 2 |" in summary and "| optimizer.lr=0.02 | completed | 2 |" in summary
    assert "optimizer.lr=0.01,seed=0 (seed 0 again, as optimizer.lr=0.01)" in summary


def test_a_run_refused_for_another_config_keeps_its_hydra_record_so_resume_still_reads_its_overrides(tmp_path,
                                                                                                     cifar_root):
    """The check comes before Hydra rewrites the dir's .hydra/: resume=<run dir> reads the run's overrides there."""
    args = [f"data.root={cifar_root}", *FAST, "hydra.run.dir=run"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    hydra_record = {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()}
    changed = run_cli(*args, "optimizer.lr=0.05", cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert changed.stderr.startswith(f"error: {tmp_path / 'run'}: holds a run of another config (optimizer.lr: 0.01 "
                                     "there, 0.05 now)")
    assert {p.name: p.read_text() for p in (tmp_path / "run" / ".hydra").iterdir()} == hydra_record
    resumed = run_cli("resume=run", cwd=tmp_path)
    assert resumed.returncode == 0 and "run: already completed, skipping" in resumed.stdout + resumed.stderr


# Runs the CLI but presses Ctrl+C (a real SIGINT) outside training: while the data loads (before training routes
# SIGINT to its own stop), or in the test after training, inside Lightning, which catches it itself.
CTRL_C_OUTSIDE_TRAINING = """
import os, signal
from cifar_ablate import classifier, data
def press_ctrl_c_first(owner, name):
    real = getattr(owner, name)
    def pressed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    setattr(owner, name, pressed)
if os.environ["WHEN"] == "loading":
    press_ctrl_c_first(data.CIFAR10DataModule, "load")
else:
    press_ctrl_c_first(classifier.Classifier, "test_step")
from cifar_ablate.run import cli
cli()
"""


@pytest.mark.parametrize("when", ["loading", "testing"])
def test_ctrl_c_outside_training_is_one_line_that_says_how_to_continue(tmp_path, cifar_root, when):
    stopped = run_cli(f"data.root={cifar_root}", *FAST, "hydra.run.dir=run", cwd=tmp_path,
                      script=CTRL_C_OUTSIDE_TRAINING, env={"WHEN": when})
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"{tmp_path / 'run'}: stopped by SIGINT outside training, nothing new saved; to continue: "
        f"python -m cifar_ablate resume={tmp_path / 'run'}")
    assert "Detected KeyboardInterrupt" not in stopped.stdout + stopped.stderr  # Lightning's own word, exit 1
    assert not (tmp_path / "run" / "metrics.json").exists()  # no record: a rerun trains (or tests) it
    resumed = run_cli(f"resume={tmp_path / 'run'}", cwd=tmp_path)
    assert resumed.returncode == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["job_num"] is None  # a single run has no place in a sweep


def test_a_report_whose_output_reader_goes_away_ends_without_a_traceback(tmp_path, cifar_root):
    sweep = run_cli("-m", "seed=0,1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert sweep.returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "cifar_ablate.report", "sweep"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    assert process.wait(timeout=120) == 0
    assert "BrokenPipeError" not in process.stderr.read()


def test_a_sweep_whose_output_reader_goes_away_still_completes_its_runs(tmp_path, cifar_root):
    """`python -m cifar_ablate ... | head -1`: the rest of the output is dropped, not the runs."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cifar_ablate", "-m", "seed=0,1", f"data.root={cifar_root}", *FAST,
               "trainer.max_epochs=2", "hydra.sweep.dir=sweep"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    process.stdout.readline()
    process.stdout.close()  # as head does after its line: every later write meets a closed pipe
    assert process.wait(timeout=300) == 0
    assert [json.loads((tmp_path / "sweep" / f"seed={s}" / "metrics.json").read_text())["status"]
            for s in (0, 1)] == ["completed", "completed"]
    assert (tmp_path / "sweep" / "summary.md").exists()


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
    assert other.stderr.strip().splitlines()[-1].startswith(  # the option as typed, not the keys it sets
        f"error: {tmp_path / 'run'}: holds a run of another config (model: lenet there, lenet_bn now); ")
    # A run from before the choices were kept names the keys.
    kept = json.loads((tmp_path / "run" / "run_config.json").read_text())
    del kept["(choices)"]
    (tmp_path / "run" / "run_config.json").write_text(json.dumps(kept))
    other = run_cli(*args, "model=lenet_bn", cwd=tmp_path)
    assert other.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'run'}: holds a run of another config (model.batch_norm: False there, True now")
    # A run from before run_config.json was kept: its checkpoint's tensors tell.
    (tmp_path / "run" / "run_config.json").unlink()
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


# Six runs: seed 4 raises (while FAULTY is set), seed 5 diverges (a learning rate of 1e8).
SIX_RUNS = """
import functools, os
from cifar_ablate import run, training
train, build_classifier = training.train, training.build_classifier
def train_with_faults(cfg, *rest):
    if cfg.seed == 4 and os.environ.get("FAULTY"):
        raise RuntimeError("injected failure")
    return train(cfg, *rest)
def build_diverging(cfg):  # seed 5 trains at lr 1e8, its config unchanged (what a rerun is compared with)
    classifier = build_classifier(cfg)
    if cfg.seed == 5:
        classifier.optimizer_factory = functools.partial(classifier.optimizer_factory, lr=1e8)
    return classifier
training.train, training.build_classifier = train_with_faults, build_diverging
run.main()
"""


def test_a_sweep_with_a_diverging_and_a_raising_run_finishes_the_rest_and_reruns_only_the_failed(tmp_path, cifar_root):
    args = ["-m", "seed=range(0,6)", f"data.root={cifar_root}", *FAST, "trainer.limit_val_batches=1",
            "logger=csv", "hydra.sweep.dir=sweep"]

    def sweep_pass(**env):
        return run_cli(*args, cwd=tmp_path, script=SIX_RUNS, env=env, timeout=600)

    sweep = tmp_path / "sweep"
    first = sweep_pass(FAULTY="1")
    assert first.returncode == 1, first.stderr[-3000:]
    rows = {r["run"]: r["status"] for r in csv.DictReader(open(sweep / "runs.csv"))}
    assert rows == {**{f"seed={s}": "completed" for s in range(4)}, "seed=4": "failed", "seed=5": "diverged"}
    summary = (sweep / "summary.md").read_text()
    assert "seed=4 (failed: RuntimeError: injected failure)" in summary and "| seed=5 | diverged |" in summary
    mtimes = {s: (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns for s in range(6)}

    second = sweep_pass()  # the cause is gone: only the failed run is redone
    assert second.returncode == 0, second.stderr[-3000:]
    assert [s for s in range(6) if (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns != mtimes[s]] == [4]
    rows = {r["run"]: r["status"] for r in csv.DictReader(open(sweep / "runs.csv"))}
    assert rows["seed=4"] == "completed" and rows["seed=5"] == "diverged"


# A sweep whose runs fail at random (seeded) and whose process is SIGKILLed when it reaches one run.
SOAK_RUNS, SOAK_FAILING, SOAK_KILL_AT = 12, 3, 4  # failing: seeds 2, 5, 6, one before the kill, two after
FLAKY_SWEEP = f"""
import os, random, signal
SOAK_RUNS = {SOAK_RUNS}
from cifar_ablate import run, training
failing = set(random.Random(7).sample(range(SOAK_RUNS), {SOAK_FAILING})) if os.environ.get("SOAK_FAIL") else set()
kill_at = int(os.environ.get("SOAK_KILL_AT", "-1"))
train = training.train
def flaky_train(cfg, run_dir, *callbacks):
    if cfg.seed == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.seed in failing:
        raise RuntimeError("injected failure")
    return train(cfg, run_dir, *callbacks)
training.train = flaky_train
run.main()
"""


def test_soak_a_dozen_runs_with_failures_and_a_kill_end_fully_accounted_for(tmp_path, cifar_root):
    args = ["-m", f"seed=range(0,{SOAK_RUNS})", f"data.root={cifar_root}", *FAST, "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1", "logger=csv", "hydra.sweep.dir=sweep"]
    sweep = tmp_path / "sweep"

    def sweep_pass(**env):
        return run_cli(*args, cwd=tmp_path, script=FLAKY_SWEEP, env=env, timeout=900)

    def statuses():
        return {int(d.name.split("=")[1]): json.loads((d / "metrics.json").read_text())["status"]
                for d in sweep.glob("seed=*") if (d / "metrics.json").exists()}

    killed = sweep_pass(SOAK_FAIL="1", SOAK_KILL_AT=str(SOAK_KILL_AT))
    assert killed.returncode == -9
    first = statuses()
    assert sorted(first) == list(range(SOAK_KILL_AT))  # the killed run and those after it left no result
    assert sorted(s for s, status in first.items() if status == "failed") == [
        s for s in sorted(random.Random(7).sample(range(SOAK_RUNS), SOAK_FAILING)) if s < SOAK_KILL_AT]
    done_first = {s: (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns
                  for s, status in first.items() if status == "completed"}

    resumed = sweep_pass(SOAK_FAIL="1")  # failures still injected: they stay failed, the sweep says so
    assert resumed.returncode == 1
    second = statuses()
    assert len(second) == SOAK_RUNS and sorted(s for s, v in second.items() if v == "failed") == sorted(
        random.Random(7).sample(range(SOAK_RUNS), SOAK_FAILING))

    healed = sweep_pass()  # the flaky cause is gone: only the failed runs are redone
    assert healed.returncode == 0, healed.stderr[-2000:]
    assert set(statuses().values()) == {"completed"} and len(statuses()) == SOAK_RUNS
    for s, mtime in done_first.items():  # nothing completed twice
        assert (sweep / f"seed={s}" / "metrics.json").stat().st_mtime_ns == mtime
    rows = list(csv.DictReader(open(sweep / "runs.csv")))
    assert len(rows) == SOAK_RUNS and all(r["status"] == "completed" for r in rows)
    # logger=csv: the report reads its curves from each run's metrics.csv.
    curves = read_curves(sweep / "seed=0")
    assert (sweep / "seed=0" / "metrics.csv").exists() and len(curves["val/acc"]) == len(curves["train/loss_epoch"]) == 1


@pytest.mark.parametrize("rank, writes", [("0", True), ("1", False)])
def test_only_rank_zero_records_a_refused_sweep_point(tmp_path, cifar_root, rank, writes):
    """Under SLURM every task runs the job; a config error is recorded before the run would import Lightning."""
    result = run_cli("-m", "optimizer.lr=0,-1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path,
                     env={"SLURM_PROCID": rank})
    assert result.returncode == 1, result.stderr[-2000:]  # both points failed; the sweep went on to the second
    assert result.stderr.count("must be > 0") == 2
    assert [p.parent.name for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))] == (
        ["optimizer.lr=-1", "optimizer.lr=0"] if writes else [])
    assert not list((tmp_path / "sweep").glob("*/*.tmp"))
