"""Sweeps through the launcher and sweeper presets the project uses: each trial gets its run dir and
metrics.json, a failed trial is recorded while the others go on, and the sweep ends with its summary."""
import csv
import json

import yaml

from conftest import FAST, run_cli

# accumulate_grad_batches=0 makes Lightning raise inside that trial.
TRIALS = ["trainer.accumulate_grad_batches=1", "trainer.accumulate_grad_batches=2",
          "trainer.accumulate_grad_batches=0"]


def assert_two_completed_one_failed(result, sweep):
    assert result.returncode == 1, result.stderr[-3000:]  # a trial failed: the sweep says so
    statuses = {name: json.loads((sweep / name / "metrics.json").read_text())["status"] for name in TRIALS}
    assert list(statuses.values()) == ["completed", "completed", "failed"]
    rows = list(csv.DictReader(open(sweep / "runs.csv")))
    assert sorted(r["run"] for r in rows) == sorted(TRIALS)
    assert "1 of 3 runs did not complete" in result.stderr


def test_parallel_launcher_runs_trials_at_once_and_survives_a_failed_one(tmp_path, cifar_root):
    result = run_cli("-m", "hydra/launcher=parallel", "trainer.accumulate_grad_batches=1,2,0",
                     f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert_two_completed_one_failed(result, tmp_path / "sweep")
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # the trials really went through joblib


def start_training_parallel_sweep(tmp_path, cifar_root):
    """A 2-trial joblib sweep in a session of its own (as a terminal's foreground job), once both trials train."""
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(REPO)
    args = ["-m", "hydra/launcher=parallel", "model=lenet,lenet_bn", f"data.root={cifar_root}", *FAST,
            "trainer.max_epochs=1000", "hydra.sweep.dir=sweep"]
    main = subprocess.Popen([sys.executable, "-m", "cifar_ablate", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    runs = [tmp_path / "sweep" / name for name in ("model=lenet", "model=lenet_bn")]
    deadline = time.time() + 120
    while not all((r / "checkpoints" / "last.ckpt").exists() for r in runs) and time.time() < deadline:
        time.sleep(0.5)
    assert all((r / "checkpoints" / "last.ckpt").exists() for r in runs), "the trials did not start training"
    # The worker's pid is in its TensorBoard event file's name.
    workers = {int(next(r.glob("events.out.tfevents.*")).name.split(".")[-2]) for r in runs}
    assert main.pid not in workers
    return main, runs, workers


def wait_for_records(runs) -> list[dict]:
    import time
    deadline = time.time() + 120
    while not all((r / "metrics.json").exists() for r in runs) and time.time() < deadline:
        time.sleep(0.5)
    return [json.loads((r / "metrics.json").read_text()) for r in runs]


def assert_ended(pids):
    import os
    import signal
    import time
    for pid in pids:  # the workers end too, rather than idling in their pool
        for _ in range(60):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"worker {pid} still alive")


def test_parallel_trials_stop_and_save_when_their_sweep_process_is_killed(tmp_path, cifar_root):
    """`kill <sweep pid>` ends only the sweep process: its joblib workers trained on unseen (found by helper-3).
    Each now stops at its next batch, saves its checkpoint, records itself as interrupted and ends."""
    import signal
    main, runs, workers = start_training_parallel_sweep(tmp_path, cifar_root)
    main.send_signal(signal.SIGTERM)
    main.wait(timeout=60)
    assert [(r["status"], r["signal"]) for r in wait_for_records(runs)] == [("interrupted", "SIGTERM")] * 2
    assert_ended(workers)
    said = main.stderr.read()  # the workers wrote to the same stderr
    for run in runs:
        assert f"{run}: stopped as the sweep process that started it is gone in epoch " in said


def test_ctrl_c_stops_every_parallel_trial_and_the_sweep_in_one_line_each(tmp_path, cifar_root):
    import os
    import signal
    main, runs, workers = start_training_parallel_sweep(tmp_path, cifar_root)
    os.killpg(main.pid, signal.SIGINT)  # as a terminal's Ctrl+C: to the whole foreground process group
    assert main.wait(timeout=60) == 130
    said = main.stderr.read()
    assert "Traceback" not in said
    assert ("stopped by SIGINT; each run continues from its last checkpoint: rerun the sweep's command with "
            "hydra.sweep.dir=<its dir>") in said.splitlines()  # the workers' own lines may come after it
    assert_ended(workers)
    # A trial either stopped itself (interrupted, a mid-epoch checkpoint) or was ended by joblib's shutdown first
    # (no record, its epoch-end checkpoint): never a result, always a checkpoint to continue from.
    for run in runs:
        record = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else None
        assert record is None or (record["status"], record["signal"]) == ("interrupted", "SIGINT")
        assert (run / "checkpoints" / "last.ckpt").exists()


def test_submitit_local_launcher_runs_each_trial_as_a_job_and_survives_a_failed_one(tmp_path, cifar_root):
    result = run_cli("-m", "hydra/launcher=submitit_local", "trainer.accumulate_grad_batches=1,2,0",
                     f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    sweep = tmp_path / "sweep"
    assert_two_completed_one_failed(result, sweep)
    # Each trial ran as its own submitit job, which left its pickled result and log there.
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 3


def test_slurm_preset_starts_one_task_per_device(compose_config):
    cfg = compose_config(["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.max_num_timeout) == (4, 4, 3)


# An Optuna search in which trial 1 raises.
FLAKY_SEARCH = """
from hydra.core.hydra_config import HydraConfig
from cifar_ablate import run, training
train = training.train
def flaky_train(cfg, *rest):
    if HydraConfig.get().job.num == 1:
        raise RuntimeError("injected failure")
    return train(cfg, *rest)
training.train = flaky_train
run.cli()
"""


def test_optuna_search_survives_a_failed_trial_reports_the_best_and_continues_from_storage(tmp_path, cifar_root):
    import optuna

    def search(n_trials, sweep_dir):
        args = ["+hparams_search=simple_nn", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.storage=sqlite:///study.db",
                f"data.root={cifar_root}", *FAST, f"hydra.sweep.dir={sweep_dir}"]
        return run_cli(*args, cwd=tmp_path, script=FLAKY_SEARCH, timeout=600)

    first = search(3, "search")
    assert first.returncode == 1, first.stderr[-3000:]  # the study finished; one trial failed
    sweep = tmp_path / "search"
    runs = {d.name: json.loads((d / "metrics.json").read_text()) for d in sweep.iterdir() if (d / "metrics.json").exists()}
    assert sorted(r["status"] for r in runs.values()) == ["completed", "completed", "failed"]
    # Each trial's dir is named by the values Optuna drew.
    assert all(name.startswith("model.dropout=") and "optimizer.lr=" in name for name in runs)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout"}
    assert best["best_value"] == max(r["best_val_acc"] for r in runs.values() if r["status"] == "completed")
    assert "Best value" in first.stdout + first.stderr
    # The report ranks the trials by the objective, the best first, and tests none against trial 0.
    from cifar_ablate.report import figure_label
    summary = (sweep / "summary.md").read_text()
    best_run = max((r for r in runs.items() if r[1]["status"] == "completed"),  # a tie: the earlier trial
                   key=lambda r: (r[1]["best_val_acc"], -r[1]["job_num"]))[0]
    assert f"| 1 | {runs[best_run]['job_num']} | {figure_label(best_run)} | completed |" in summary
    assert "A search (OptunaSweeper)" in summary and "Welch" not in summary
    by_hand = run_cli(str(sweep), "--baseline", best_run, module="cifar_ablate.report", cwd=tmp_path)
    assert by_hand.returncode == 2 and "is a search (OptunaSweeper)" in by_hand.stderr

    study = optuna.load_study(study_name="simple_nn", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.best_value == best["best_value"]

    more = search(1, "search_more")  # the stored study goes on: a 4th trial
    assert more.returncode == 0, more.stderr[-3000:]
    study = optuna.load_study(study_name="simple_nn", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 4 and study.trials[3].state.name == "COMPLETE"


def test_gpu_trials_of_a_sweep_take_the_visible_gpus_in_turn(compose_config, monkeypatch):
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    try:
        for mode, num, devices in (("RUN", 0, 1), ("MULTIRUN", 0, [0]), ("MULTIRUN", 5, [1]), ("MULTIRUN", 7, [3])):
            cfg = compose_config(["trainer=gpu", f"hydra.mode={mode}", f"hydra.job.num={num}"],
                                 return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            assert OmegaConf.to_container(cfg.trainer, resolve=True)["devices"] == devices
        cfg = compose_config(["trainer=gpu", "hydra.mode=MULTIRUN"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # as the launching process sees it: no job number
        assert OmegaConf.to_container(cfg.trainer, resolve=True)["devices"] == 1
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU: every trial on it
        assert OmegaConf.to_container(cfg.trainer, resolve=True)["devices"] == 1
    finally:
        HydraConfig.instance().cfg = None


def test_default_trainer_takes_bf16_and_cudnn_autotuning_only_on_a_gpu(compose_config, monkeypatch):
    import torch
    from omegaconf import OmegaConf

    def trainer(*overrides):
        keys = OmegaConf.to_container(compose_config(list(overrides)).trainer, resolve=True)
        return keys["precision"], keys["benchmark"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer() == ("32-true", None)  # auto on a machine without CUDA: the CPU, fp32
    assert trainer("trainer=gpu") == ("bf16-mixed", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer() == ("bf16-mixed", True)  # auto finds the GPU
    assert trainer("trainer.accelerator=cpu") == ("32-true", None)
    assert trainer("trainer.precision=32-true") == ("32-true", True)  # an explicit choice stands
