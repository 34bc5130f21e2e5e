"""End to end, as a user types it: single runs, sweeps, their files, and bad input."""
import csv
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_ablate.report import run_dirs
from conftest import FAST, run_cli, write_cifar_tree

RUN_KEYS = {"status", "test_acc", "best_val_acc", "test_loss", "epochs", "train_seconds",
            "images_per_second", "params", "peak_gpu_memory_mb", "overrides"}


def tensorboard_tags(run_dir: Path) -> set:
    tags = set()
    for event_file in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | {f"tensor:{t}" for t in acc.Tags()["tensors"]}
    return tags


def test_single_run_writes_metrics_and_tensorboard_logs(tmp_path, cifar_root):
    result = run_cli(f"data.root={cifar_root}", *FAST, "trainer.log_every_n_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(run_dirs) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d", run_dirs[0].parent.name)
    run_dir = run_dirs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert RUN_KEYS <= set(metrics)
    assert metrics["status"] == "completed" and metrics["epochs"] == 1 and metrics["params"] == 62_006
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["best_val_acc"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["images_per_second"] > 0
    assert metrics["peak_gpu_memory_mb"] is None  # trained on the CPU
    assert f"data.root={cifar_root}" in metrics["overrides"]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    tags = tensorboard_tags(run_dir)
    assert {"train/loss_step", "train/loss_epoch", "train/acc_step", "train/acc_epoch", "val/loss", "val/acc",
            "test/loss", "test/acc", "lr-SGD", "hparams/test_acc", "hparams/best_val_acc",
            "tensor:custom_scalars__config__"} <= tags
    assert "hp_metric" not in tags
    # Not a terminal: epoch lines instead of a progress bar.
    assert "epoch 1/1" in result.stdout
    # Lightning's lines once, through Hydra's logging, which also writes them to run.log.
    assert (result.stdout + result.stderr).count("GPU available: False") == 1
    assert "GPU available: False" in (run_dir / "run.log").read_text()
    # None of Lightning's noise; its model summary counts LeNet's forward FLOPs for one image (it read 0).
    output = result.stdout + result.stderr
    assert "Tip:" not in output and "LeafSpec" not in output
    assert re.search(r"Total FLOPs: 1\.3 M", output), output[-3000:]


def tensorboard_hparams(run_dir: Path) -> dict:
    """The values the HPARAMS tab lists for the run."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    acc = EventAccumulator(str(run_dir))  # every event file of the run (Lightning writes the hparams to another)
    acc.Reload()
    start = HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}


def test_hparams_name_every_value_of_the_runs_groups_and_an_option_may_leave_lr_to_its_class(tmp_path, cifar_root):
    # An optimizer option without lr (torch's default) trained the whole run, then failed writing the HPARAMS.
    result = run_cli(f"data.root={cifar_root}", *FAST, "optimizer=adam", "~optimizer.lr", "model=lenet_bn",
                     "model.activation=swish", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    hparams = tensorboard_hparams(tmp_path / "run")
    # A sweep over a model key (model.activation=relu,swish) is told apart in the tab by it.
    assert hparams["model"] == "lenet_bn" and hparams["model.activation"] == "swish"
    assert hparams["model.batch_norm"] == 1 and hparams["optimizer"] == "adam" and "optimizer.lr" not in hparams
    assert hparams["data.batch_size"] == 32 and hparams["seed"] == 0 and hparams["regularization.l2"] == 0


def test_sweep_over_three_models(tmp_path, cifar_root):
    # A baseline given as a run name, unquoted (Hydra's grammar takes '=' in a value only quoted).
    result = run_cli("-m", "model=lenet,lenet_dropout,lenet_bn", "baseline=model=lenet_bn", f"data.root={cifar_root}",
                     *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1
    sweep = sweeps[0]
    names = ["model=lenet", "model=lenet_dropout", "model=lenet_bn"]
    for name in names:
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["status"] == "completed" and f"model={name.split('=')[1]}" in metrics["overrides"]
        assert "val/acc" in tensorboard_tags(sweep / name)
    # One log root: each run's event files sit directly in its folder, which TensorBoard uses as the run name.
    assert {p.parent.name for p in sweep.glob("*/events.out.tfevents.*")} == set(names)
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == names and all(r["status"] == "completed" for r in rows)
    assert [r["baseline"] for r in rows] == ["False", "False", "True"]
    assert all(0 <= float(r["test_acc_mean"]) <= 1 for r in rows)
    summary_md = (sweep / "summary.md").read_text()
    assert all(f"| {n} | completed |" in summary_md for n in names)
    assert "differences are not tested" in summary_md
    assert "| model=lenet_bn | completed |" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["-m", "model=lenet,lenet_bn", "baseline=model=lenet_bnn"],
     "baseline=model=lenet_bnn: no variant of this sweep has that name (its variants: model=lenet, model=lenet_bn)"),
    (["-m", "+hparams_search=simple_nn", "baseline=model=lenet"],
     "baseline=model=lenet: this sweep is a search (OptunaSweeper), whose trials are ranked, not compared with a "
     "baseline"),
])
def test_a_sweeps_baseline_that_cannot_be_compared_with_is_refused_before_anything_trains(tmp_path, cifar_root,
                                                                                         args, message):
    result = run_cli(*args, f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "sweep").exists()  # no run began, and no empty sweep dir is left to look like one


def test_a_sweeps_baseline_may_name_a_variant_its_dir_holds_from_an_earlier_command(tmp_path, cifar_root):
    first = run_cli("-m", "model=lenet,lenet_dropout", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep",
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    added = run_cli("-m", "model=lenet_dropout,lenet_bn", "baseline=model=lenet", f"data.root={cifar_root}", *FAST,
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    with open(tmp_path / "sweep" / "summary.csv") as f:
        assert [(r["variant"], r["baseline"]) for r in csv.DictReader(f)] == [
            ("model=lenet", "True"), ("model=lenet_dropout", "False"), ("model=lenet_bn", "False")]


def test_sweep_goes_on_past_a_failed_run_and_exits_nonzero(tmp_path, cifar_root):
    # accumulate_grad_batches=0 makes Lightning raise inside the run.
    result = run_cli("-m", "trainer.accumulate_grad_batches=1,0", f"data.root={cifar_root}", *FAST,
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1
    rows = {r["run"]: r for r in csv.DictReader(open(tmp_path / "sweep" / "runs.csv"))}
    assert rows["trainer.accumulate_grad_batches=1"]["status"] == "completed"
    assert rows["trainer.accumulate_grad_batches=0"]["status"] == "failed"
    failed = json.loads((tmp_path / "sweep" / "trainer.accumulate_grad_batches=0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "error" in failed and failed["epoch"] == 0
    assert "1 of 2 runs did not complete" in result.stderr


def test_a_diverging_run_is_a_result_with_status_diverged(tmp_path, cifar_root):
    result = run_cli(f"data.root={cifar_root}", *FAST, "optimizer.lr=1e8", "trainer.max_epochs=3",
                     "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["epochs"] == 1


def test_validation_every_few_epochs_is_shown_and_drawn_at_the_epochs_it_ran(tmp_path, cifar_root):
    from cifar_ablate.report import read_curves
    result = run_cli(f"data.root={cifar_root}", *FAST, "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
                     "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    # Epochs 1 and 3 ran no validation: their lines do not repeat the last one's values as their own.
    assert ["val/acc" in line for line in lines] == [False, True, False, True]
    curves = read_curves(tmp_path / "run")
    assert list(curves["val/acc"]) == [2, 4] and list(curves["train/loss_epoch"]) == [1, 2, 3, 4]


def test_a_run_that_never_validated_says_so_instead_of_a_best_accuracy(tmp_path, cifar_root):
    result = run_cli(f"data.root={cifar_root}", *FAST, "trainer.check_val_every_n_epoch=2", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "run: test_acc 0." in output and "best_val_acc none (no epoch validated)" in output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best_val_acc"] is None


BAD_VALUES = [  # the catalogue in docs/reliability.md
    ("optimizer.lr=0", "optimizer.lr=0: must be > 0"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: must be a whole number"),
    ("model=[lenet,lenet_bn]", r"model: a list of options \(model=\[a,b\]\) merges them into one run; to compare "
                               r"them, sweep: -m model=a,b"),
    # Forgetting -m: Hydra's refusal was a block of lines ("Ambiguous value for argument").
    ("seed=0,1", r"seed=0,1: a sweep of values runs with -m \(python -m cifar_ablate -m seed=0,1 ...\); without it "
                 r"a command is one run"),
    ("optimizer.momentum=1.5", r"optimizer.momentum=1.5: must be in \[0, 1\)"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay=-0.0001: must be >= 0"),
    ("model.dropout=-0.1", r"model.dropout=-0.1: must be in \[0, 1\)"),
    ("model.activation=tanh", "model.activation=tanh: must be one of relu, swish, silu, leaky_relu"),
    ("init.scheme=he", "init.scheme=he: must be one of default, xavier_normal, xavier_uniform, kaiming_normal, "
                       "kaiming_uniform, orthogonal"),
    ("data.train_fraction=0", r"data.train_fraction=0.0: must be in \(0, 1\]"),
    ("data.std=[0.2,0,0.2]", r"data.std=\[0.2, 0.0, 0.2\]: needs 3 values, all > 0"),
    ("augment.crop_padding=-4", r"augment.crop_padding=-4: must be in \[0, 16\]"),
    ("augment.brightness=2", r"augment.brightness=2.0: must be in \[0, 1\]"),
    ("regularization.l1=-1", "regularization.l1=-1.0: must be >= 0"),
    ("regularization.layers=[fc9]", "regularization.layers=\\['fc9'\\]: LeNet has no layer fc9; its layers are conv1, conv2, fc1, fc2, fc3"),
    ("seed=-1", r"seed=-1: must be in \[0, 2\*\*32\)"),
    ("data.split_seed=-1", r"data.split_seed=-1: must be in \[0, 2\*\*32\)"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0: must be >= 1"),
    ("trainer.log_every_n_steps=-1", r"trainer.log_every_n_steps=-1: must be >= 0 \(0 logs no step values\)"),
    ("compile_mode=fast", "compile_mode=fast: must be one of default, reduce-overhead, max-autotune, "
                          "max-autotune-no-cudagraphs"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: must be >= 1"),
    ("optimizer.lr=abc", "optimizer.lr=abc: must be a number"),
    # A value Lightning's Trainer refuses when built, though it fits the type Lightning declares.
    ("trainer.strategy=foo", r"trainer: You selected an invalid strategy name: `strategy='foo'`.*"),
    ("model.dropout=true", "model.dropout=True: must be a number"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1: must be > 0"),
    ("model.dropout=1.0", r"model.dropout=1.0: must be in \[0, 1\)"),
    ("data.batch_size=0", "data.batch_size=0: must be >= 1"),
    ("data.val_size=300", r"data.val_size=300: must be in \[0, 300\) for the 300 training images"),
    ("scheduler=cosine scheduler.T_max=0", "scheduler.T_max=0: must be >= 1"),
    ("trainer.limit_train_batches=0", r"trainer.limit_train_batches=0: must be > 0 \(a fraction or a batch count\)"),
    ("optimizer=adam optimizer.betas=[0.9,2]",
     r"optimizer: torch.optim.Adam refused its values \(Invalid beta parameter at index 1: 2\)"),
    # A scheduler too is built only mid-fit: a traceback after training had begun.
    ("scheduler=onecycle +scheduler.div_factor=0",
     r"scheduler: torch.optim.lr_scheduler.OneCycleLR refused its values \(float division by zero\)"),
    ("data.num_workers=2", r"data.num_workers=2: applies to data.loader=torch only"),
    ("scheduler=plateau scheduler.interval=step",
     r"scheduler.interval=step: must be epoch for scheduler.monitor=val/loss \(it steps after each validation"),
    ("scheduler=plateau trainer.limit_val_batches=0",
     "trainer.limit_val_batches=0: must be > 0 for scheduler.monitor=val/loss: without validation there is no metric"),
    # Keys added with `+`, which Hydra's own refusal of a misspelt key suggests: nothing would read them, or the
    # class would refuse them after the data loaded (a traceback).
    ("+optimzer.lr=0.1", r"optimzer: not a config group or key, so nothing would read it; did you mean optimizer\?"),
    ("+data.batchsize=8", r"data.batchsize: not a key of data; did you mean batch_size\?"),
    ("+init.schem=xavier_normal", r"init.schem: not a key of init; did you mean scheme\?"),
    ("data.root={tmp}/empty", "data.root=.*/empty: no CIFAR-10 at .*set data.download=true"),
    ("data.root={tmp}/truncated", ".*/data_batch_2: not a readable CIFAR-10 batch"),
    ("data.root={tmp}/labels", r".*/test_batch: labels must lie in 0..9, found 0..12"),
]


# Refusals check_config makes once it has imported the options' classes (keys no parameter takes, a class that is
# not there): checked in-process, as a CLI run would import Lightning for each; the CLI path is BAD_VALUES', and
# sweeps of such keys are in the tests below.
CLASS_KEYS = [
    ("+model.dropuot=0.3", r"model.dropuot: not a parameter of LeNet \(model=lenet\); did you mean dropout\?"),
    ("scheduler=step +scheduler.gama=0.5",
     r"scheduler.gama: not a parameter of StepLR \(scheduler=step\); did you mean gamma\?"),
    ("regularization=dropout_0.3_0.2", r"model.dropout2: not a parameter of LeNet \(model=lenet\), which "
                                       r"regularization=dropout_0.3_0.2 sets; it takes activation, batch_norm, "
                                       r"dropout, num_classes"),
    ("trainer.fast_dev_run=true", "trainer.fast_dev_run=True: not supported: it turns off logging and checkpoints"),
    ("scheduler=none +scheduler.gamma=0.1", "scheduler.gamma: scheduler=none builds nothing, so nothing would read it"),
    # A yes/no word in a group without a schema would be a non-empty string, so true: BatchNorm on.
    ("model=lenet_bn model.batch_norm=no", "model.batch_norm=no: must be true or false"),
    ("optimizer=sgd optimizer.nesterov=off", "optimizer.nesterov=off: must be true or false"),
    # Lightning's fast_dev_run is Union[int, bool]: 5 is a value, refused as cifar_ablate does not support it
    ("trainer.fast_dev_run=5", "trainer.fast_dev_run=5: not supported: it turns off logging and checkpoints"),
    ("model._target_=cifar_ablate.models.Nope", r"model._target_=cifar_ablate.models.Nope: cannot be imported "
                                                r"\(ImportError\)"),
    # Values of the type the class declares: an open group has no schema to refuse them, and a wrong one failed as
    # the class was built (after the data loaded), or silently did nothing (milestones as strings never match).
    ("scheduler=step scheduler.step_size=2.5", "scheduler.step_size=2.5: must be a whole number"),
    ("scheduler=step scheduler._target_=torch.optim.lr_scheduler.MultiStepLR ~scheduler.step_size "
     "+scheduler.milestones=['1','2']", r"scheduler.milestones=\['1', '2'\]: must be a list of whole numbers"),
    ("scheduler=cyclic scheduler.mode=foo", "scheduler.mode=foo: must be one of triangular, triangular2, exp_range"),
    ("optimizer=adam optimizer.betas=[0.9,abc]", r"optimizer.betas=\[0.9, 'abc'\]: must be a list of numbers"),
    ("trainer.precision=17", "trainer.precision=17: must be one of 64, 32, 16, transformer-engine"),
    ("model.activation=1", "model.activation=1: must be one of relu, swish"),
    ("scheduler=step ~scheduler._partial_", r"scheduler=step: its YAML needs `_partial_: true`, as cifar_ablate "
                                           r"passes the optimizer itself"),
]


@pytest.mark.parametrize("override, message", CLASS_KEYS)
def test_a_key_the_options_class_does_not_take_is_refused_in_one_line(compose_config, override, message):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cifar_ablate.config import check_config
    from cifar_ablate.errors import ConfigError
    overrides = override.split()
    choices = {"model": "lenet", "scheduler": "none", "regularization": "none", "trainer": "default"}
    for o in OverridesParser.create().parse_overrides(overrides):  # the group options picked, as Hydra records them
        if o.key_or_group in choices:
            choices[o.key_or_group] = o.value()
    with pytest.raises(ConfigError) as refused:
        check_config(compose_config(overrides), choices=choices)
    assert re.fullmatch(message + ".*", str(refused.value))


@pytest.mark.parametrize("override, hint", [
    ("trainer=gpu", "gpu"),
    ("trainer.accelerator=tpu", "tpu"),  # Lightning's refusal names only the package it lacks, torch_xla
    ("trainer.accelerator=gpux", None),  # not a name: Lightning lists the names it knows, no hint needed
])
def test_asking_for_an_accelerator_the_machine_lacks_says_what_runs_here(tmp_path, cifar_root, override, hint):
    result = run_cli(f"data.root={cifar_root}", *FAST[:-1], override, "hydra.run.dir=run", cwd=tmp_path,
                     env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, also where the suite runs on a GPU machine
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer: ")
    said = re.search(r" \(no (\w+) here: trainer=cpu, or trainer.accelerator=auto, runs on what this machine has\)$",
                     last)
    assert (said and said.group(1)) == hint, last


@pytest.mark.parametrize("override, message", BAD_VALUES)
def test_bad_value_stops_before_training_with_one_line(tmp_path, cifar_root, override, message):
    broken = write_cifar_tree(tmp_path / "truncated", per_batch=10, test_images=10) / "data_batch_2"
    broken.write_bytes(broken.read_bytes()[:500])
    test_batch = write_cifar_tree(tmp_path / "labels", per_batch=10, test_images=10) / "test_batch"
    batch = pickle.loads(test_batch.read_bytes())
    batch["labels"][3] = 12
    test_batch.write_bytes(pickle.dumps(batch))
    args = [f"data.root={cifar_root}", *FAST, "hydra.run.dir=run", *override.format(tmp=tmp_path).split()]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert re.fullmatch(f"error: {message}.*", result.stderr.strip().splitlines()[-1])
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "run_config.json").exists()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("override, message", [
    ("model=lenet7", "Could not find 'model/lenet7'"),
    ("data.batchsize=8", "Key 'batchsize' not in 'DataConfig'"),
    ("data.batch_size=many", "Value 'many' of type 'str' could not be converted to Integer"),
])
def test_unknown_options_keys_and_types_are_refused(tmp_path, cifar_root, override, message):
    result = run_cli(f"data.root={cifar_root}", *FAST, "hydra.run.dir=run", override, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("args, key", [
    (["hydra.run.dir=taken/run"], "hydra.run.dir"),
    (["-m", "seed=0,1", "hydra.sweep.dir=taken/sweep"], "hydra.sweep.dir"),
    ([], "hydra.run.dir"),  # the default outputs/runs/<date>/<time>, with ./outputs not a dir
])
def test_an_unwritable_output_dir_stops_in_one_line_before_anything_runs(tmp_path, cifar_root, args, key):
    # A file where a dir should go: root may write anywhere, so permissions alone cannot make this case.
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "outputs").write_text("a file")
    result = run_cli(*args, f"data.root={cifar_root}", *FAST, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.fullmatch(f"error: {key}: cannot write the output dir \\(.*Not a directory: .*\\); "
                        f"pass a writable {key}=<dir>", result.stderr.strip())


def test_report_compares_variants_over_seeds_and_draws_the_figures(tmp_path, cifar_root):
    """2 variants x 2 seeds: mean ± std, n, Welch's test against the baseline, PNG figures."""
    result = run_cli("-m", "model=lenet,lenet_bn", "seed=0,1", f"data.root={cifar_root}", *FAST,
                     "trainer.max_epochs=2", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in run_dirs(sweep)) == ["model=lenet,seed=0", "model=lenet,seed=1",
                                                        "model=lenet_bn,seed=0", "model=lenet_bn,seed=1"]
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [(r["variant"], r["n"], r["baseline"]) for r in rows] == [("model=lenet", "2", "True"),
                                                                      ("model=lenet_bn", "2", "False")]
    runs = [r for r in csv.DictReader(open(sweep / "runs.csv"))]
    lenet_bn = [float(r["test_acc"]) for r in runs if r["variant"] == "model=lenet_bn"]
    assert float(rows[1]["test_acc_mean"]) == pytest.approx(sum(lenet_bn) / 2)
    summary = (sweep / "summary.md").read_text()
    assert "| variant | status | n | test_acc (mean ± std) |" in summary and "p (Welch) | p (Holm)" in summary
    assert re.search(r"\| model=lenet_bn \| completed \| 2 \| 0\.\d{4} ± 0\.\d{4} \|", summary)
    for png in ("val_acc.png", "train_loss.png", "test_acc.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The figures' numbers, per variant, metric and epoch, and each variant's peak and last epoch in the summary.
    curves = list(csv.DictReader(open(sweep / "curves.csv")))
    assert sorted({(r["variant"], r["metric"], r["epoch"], r["n"]) for r in curves}) == sorted(
        (v, m, e, "2") for v in ("model=lenet", "model=lenet_bn") for m in ("train_loss", "val_acc", "val_loss")
        for e in ("1", "2"))
    assert re.search(r"\| model=lenet_bn \| 0\.\d{4} \([12]\) \| 0\.\d{4} \| \d\.\d{4} \([12]\) \|", summary)

    # The report rebuilds everything from the run folders alone, also after the sweep dir moved.
    moved = tmp_path / "copied_elsewhere"
    shutil.copytree(sweep, moved)
    for name in ("summary.csv", "summary.md", "val_acc.png"):
        (moved / name).unlink()
    report = run_cli(str(moved), module="cifar_ablate.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (moved / "val_acc.png").exists() and "model=lenet_bn" in (moved / "summary.md").read_text()


def test_report_lists_failed_and_unfinished_runs(tmp_path, cifar_root, monkeypatch):
    result = run_cli("-m", "seed=0,1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "sweep" / "seed=1" / "metrics.json").unlink()  # as if still running or killed
    report = run_cli(str(tmp_path / "sweep"), module="cifar_ablate.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Runs without a result: seed=1 (unfinished)" in report.stdout
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert rows[0]["n"] == "1" and rows[0]["runs"] == "2" and rows[0]["status"] == "completed/unfinished"
    # The figures average the runs with a result only, as the table does: the unfinished run's curve is left out.
    from cifar_ablate import report as report_module
    drawn = []
    plot = report_module.plot_curves
    monkeypatch.setattr(report_module, "plot_curves", lambda curves, *a: drawn.append(curves) or plot(curves, *a))
    report_module.write_report(tmp_path / "sweep")
    assert [{v: len(c) for v, c in curves.items()} for curves in drawn] == [{"default": 1}] * 2


def test_a_cut_short_metrics_json_is_listed_and_a_rerun_trains_that_run_again(tmp_path, cifar_root):
    command = ("-m", "seed=0,1", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep")
    assert run_cli(*command, cwd=tmp_path).returncode == 0
    cut, kept = tmp_path / "sweep" / "seed=0" / "metrics.json", tmp_path / "sweep" / "seed=1" / "metrics.json"
    cut.write_text(cut.read_text()[:40])  # a full disk, or a copy interrupted
    kept_before = kept.read_text()
    report = run_cli(str(tmp_path / "sweep"), module="cifar_ablate.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Runs without a result: seed=0 (unreadable: metrics.json: " in report.stdout
    rerun = run_cli(*command, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(cut.read_text())["status"] == "completed" and kept.read_text() == kept_before


# Reports whether torch was imported by the time the process exits.
TORCH_AT_EXIT = """
import atexit, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from cifar_ablate.run import cli
cli()
"""


@pytest.mark.parametrize("override", ["optimizer.lr=0", "data.batch_size=many", "model=lenet7"])
def test_a_config_error_is_reported_before_torch_is_imported(tmp_path, cifar_root, override):
    """torch, torchvision and Lightning take seconds to import; a mistyped override should not wait for them."""
    result = run_cli(f"data.root={cifar_root}", "hydra.run.dir=run", override, cwd=tmp_path, script=TORCH_AT_EXIT,
                     fresh=True)
    assert result.returncode in (1, 2), result.stderr[-2000:]
    assert "torch imported: False" in result.stderr


def test_a_bad_value_in_one_sweep_point_fails_that_run_and_the_sweep_goes_on(tmp_path, cifar_root):
    result = run_cli("-m", "optimizer.lr=0.01,0,0.02", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert "error: optimizer.lr=0: must be > 0" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    sweep = tmp_path / "sweep"
    rows = {r["run"]: r["status"] for r in csv.DictReader(open(sweep / "runs.csv"))}
    assert rows == {"optimizer.lr=0.01": "completed", "optimizer.lr=0": "failed", "optimizer.lr=0.02": "completed"}
    failed = json.loads((sweep / "optimizer.lr=0" / "metrics.json").read_text())
    assert failed["error"] == "ConfigError: optimizer.lr=0: must be > 0" and "test_acc" not in failed
    assert not list((sweep / "optimizer.lr=0").glob("events.out.tfevents.*"))


def test_an_option_that_fits_only_some_models_fails_only_their_sweep_points(tmp_path, cifar_root):
    """dropout_0.3_0.2 is for cnn3: lenet's point is refused in one line (it was a traceback), cnn3's trains."""
    result = run_cli("-m", "model=lenet,cnn3", "regularization=dropout_0.3_0.2", f"data.root={cifar_root}", *FAST,
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("error: model.dropout2: not a parameter of LeNet (model=lenet), which regularization=dropout_0.3_0.2 "
            "sets; it takes activation, batch_norm, dropout, num_classes") in result.stderr.splitlines()
    rows = {r["run"]: r["status"] for r in csv.DictReader(open(tmp_path / "sweep" / "runs.csv"))}
    assert rows == {"model=lenet": "failed", "model=cnn3": "completed"}


def test_a_key_misspelt_with_plus_stops_the_sweep_at_once(tmp_path, cifar_root):
    result = run_cli("-m", "seed=0,1", "+data.batchsize=8", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines().count("error: data.batchsize: not a key of data; did you mean "
                                                    "batch_size?") == 1
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))
    # Also when the sweep varies the group: no option of it takes the misspelt key.
    result = run_cli("-m", "model=lenet,cnn3", "+model.dropuot=0.3", f"data.root={cifar_root}", *FAST,
                     "hydra.sweep.dir=sweep2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not list((tmp_path / "sweep2").glob("*/metrics.json"))


def test_images_per_second_counts_only_the_batches_trained(tmp_path, cifar_root):
    """trainer.limit_train_batches=3 of 32 images trains 96 images an epoch, not the 250 of the split."""
    result = run_cli(f"data.root={cifar_root}", *FAST, "trainer.limit_train_batches=3", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["images_per_second"] == pytest.approx(96 / metrics["train_seconds"], rel=0.02)


def test_a_bad_value_every_sweep_point_shares_stops_the_sweep_at_once(tmp_path, cifar_root):
    result = run_cli("-m", "seed=0,1", "optimizer.lr=0", f"data.root={cifar_root}", *FAST, "hydra.sweep.dir=sweep",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines().count("error: optimizer.lr=0: must be > 0") == 1
    assert not (tmp_path / "sweep").exists()  # no run dir a report would list as running or stopped


def test_help_names_the_program_and_lists_the_groups(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("cifar_ablate is powered by Hydra.")
    assert all(f"\n{group}: " in result.stdout for group in ("model", "optimizer", "scheduler", "regularization"))


def test_a_sweep_asked_for_its_config_is_one_line_that_says_what_to_do(tmp_path):
    result = run_cli("-m", "model=lenet,lenet_bn", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: --multirun and --cfg: give one of --run, --multirun, --cfg, --info, "
                                     "--shell-completion; to see a sweep point's config, give its values without -m")
    single = run_cli("model=lenet_bn", "--cfg", "job", cwd=tmp_path)  # one point's config, as the line says
    assert single.returncode == 0 and "batch_norm: true" in single.stdout
