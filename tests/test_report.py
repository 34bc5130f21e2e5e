"""The report's statistics and figures, on hand-made numbers."""
import math

import pytest

from cifar_ablate.errors import ConfigError
from cifar_ablate.report import (curve_readings, curve_rows, holm, mean_curve, plot_curves, plot_test_accuracy,
                                 summary_markdown, variant_of, variant_rows, welch_p)


def test_variant_is_the_run_name_without_its_seed():
    assert variant_of("model=lenet,seed=2") == "model=lenet"
    assert variant_of("seed=0") == "default"
    assert variant_of("data.mean=[0.5,0.5,0.5],seed=1") == "data.mean=[0.5,0.5,0.5]"
    assert variant_of("optimizer.lr=0.01") == "optimizer.lr=0.01"


def test_welch_p_matches_the_formula():
    a, b = [0.60, 0.62, 0.61], [0.55, 0.56, 0.58]
    ma, mb = sum(a) / 3, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 2
    t = (ma - mb) / math.sqrt(va / 3 + vb / 3)
    dof = (va / 3 + vb / 3) ** 2 / ((va / 3) ** 2 / 2 + (vb / 3) ** 2 / 2)
    from scipy.stats import t as student_t
    assert welch_p(a, b) == pytest.approx(2 * student_t.sf(abs(t), dof))
    assert math.isnan(welch_p([0.5], b))  # one seed: nothing to test


def test_holm_adjusts_a_studys_p_values_step_down():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "baseline": math.nan})
    # Sorted 0.01, 0.03, 0.04: times 3, 2, 1, each at least the one before: 0.03, 0.06, 0.06.
    assert adjusted["a"] == pytest.approx(0.03) and adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06) and math.isnan(adjusted["baseline"])
    assert holm({"a": 0.02}) == {"a": 0.02}  # one comparison: nothing to adjust
    assert holm({"a": 0.6, "b": 0.7})["a"] == 1.0  # capped


def run(variant, seed, acc, status="completed"):
    return {"run": f"{variant},seed={seed}", "variant": variant, "status": status, "test_acc": acc,
            "best_val_acc": acc, "epochs": 3, "train_seconds": 1.0}


def test_variant_rows_compare_against_the_named_baseline():
    runs = [run("model=a", 0, 0.50), run("model=a", 1, 0.52), run("model=b", 0, 0.70), run("model=b", 1, 0.72),
            run("model=c", 0, 0.51), run("model=c", 1, 0.49), run("model=c", 2, None, status="failed")]
    rows = {r["variant"]: r for r in variant_rows(runs, baseline="model=a")}
    assert rows["model=a"]["baseline"] and math.isnan(rows["model=a"]["p_value"])
    assert rows["model=b"]["test_acc_mean"] == pytest.approx(0.71)
    assert rows["model=b"]["test_acc_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    assert rows["model=b"]["delta_vs_baseline"] == pytest.approx(0.20) and rows["model=b"]["differs"] is True
    assert rows["model=c"]["differs"] is False and rows["model=c"]["n"] == 2 and rows["model=c"]["runs"] == 3
    assert rows["model=c"]["status"] == "completed/failed"
    # Several variants: the verdict is on Holm's p. Here d alone would pass Welch at 5% (p = 0.031); beside
    # b's smaller p, Holm doubles d's, and d is not called different.
    runs += [run("model=d", 0, 0.58), run("model=d", 1, 0.59), run("model=d", 2, 0.60)]
    rows = {r["variant"]: r for r in variant_rows(runs, baseline="model=a")}
    assert 0.025 < rows["model=d"]["p_value"] < 0.05 and rows["model=d"]["p_holm"] >= 0.05
    assert rows["model=d"]["differs"] is False and rows["model=b"]["differs"] is True
    named = variant_rows([run("augment=none,data.normalize=True", 0, 0.5),
                          run("augment=crop,data.normalize=True", 0, 0.6)],
                         baseline="data.normalize=true,augment=none")  # as a user types it: any order, true
    assert [r["baseline"] for r in named] == [True, False]
    numbers = variant_rows([run("optimizer.lr=0.001,optimizer=adam", 0, 0.5), run("optimizer.lr=0.01,optimizer=adam",
                                                                                0, 0.6)],
                           baseline="optimizer=adam,optimizer.lr=1e-3")  # as the preset's sweep spells it
    assert [r["baseline"] for r in numbers] == [True, False]
    with pytest.raises(ConfigError, match="model=A"):  # other values keep their case: act=ReLU is not act=relu
        variant_rows([run("model=a", 0, 0.5)], baseline="model=A")
    first = variant_rows(runs, baseline=None)[0]
    assert first["variant"] == "model=a" and first["baseline"]
    # A first variant without a result (a value refused in its runs) cannot be compared with: the next one is.
    rows = variant_rows([run("lr=-1", 0, None, status="failed"), run("lr=-1", 1, None, status="failed"),
                         run("lr=0.01", 0, 0.5), run("lr=0.01", 1, 0.52), run("lr=0.1", 0, 0.7), run("lr=0.1", 1, 0.72)],
                        baseline=None)
    assert [r["baseline"] for r in rows] == [False, True, False] and rows[2]["differs"] is True


def test_a_baseline_that_names_no_variant_is_refused_by_hand_and_noted_in_a_sweep(tmp_path):
    import json
    import subprocess
    import sys

    from cifar_ablate.report import write_report

    runs = [run("model=a", 0, 0.50), run("model=b", 0, 0.70)]
    with pytest.raises(ConfigError, match="model=typo"):
        variant_rows(runs, baseline="model=typo")
    for r in runs:  # a sweep dir as the runs leave it
        run_dir = tmp_path / r["run"]
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("baseline: model=typo\n")
        (run_dir / "metrics.json").write_text(json.dumps({**r, "name": r["run"]}))
    _, _, markdown = write_report(tmp_path)  # the sweep's configured baseline: noted, the report still written
    assert "Note: baseline=model=typo: no variant" in markdown and "model=a, model=b" in markdown
    cli = subprocess.run([sys.executable, "-m", "cifar_ablate.report", str(tmp_path), "--baseline", "model=c"],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and cli.stderr.strip().splitlines() == [
        "error: baseline=model=c: no variant of this sweep has that name (its variants: model=a, model=b)"]


def test_a_folder_of_single_runs_names_each_by_the_overrides_not_every_run_had(tmp_path):
    """A day's outputs/runs/<date>: dirs named by start time, the runs typed one by one."""
    import json

    from cifar_ablate.report import write_report
    typed = {"09-00-00": ["trainer.max_epochs=5", "data.root=/data"],
             "09-10-00": ["trainer.max_epochs=5", "seed=1", "data.root=/elsewhere"],  # the data moved: same variant
             "09-20-00": ["trainer.max_epochs=5", "model=lenet_bn"],
             "09-30-00": ["trainer.max_epochs=5", "model=lenet_bn", "seed=1"]}
    for (name, overrides), acc in zip(typed.items(), (0.50, 0.52, 0.60, 0.63)):
        hydra_dir = tmp_path / name / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (hydra_dir / "hydra.yaml").write_text("hydra:\n  mode: RUN\n  job:\n    num: ???\n")  # as a single run's
        seed = int(next((o.split("=")[1] for o in overrides if o.startswith("seed=")), 0))
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "completed", "seed": seed, "test_acc": acc, "best_val_acc": acc, "epochs": 5,
             "train_seconds": 1.0, "job_num": None}))
    variants, runs, markdown = write_report(tmp_path)
    assert [(v["variant"], v["n"], v["baseline"]) for v in variants] == [("default", 2, True),
                                                                           ("model=lenet_bn", 2, False)]
    assert markdown.startswith(f"# Single runs in {tmp_path.name}\n\nNote: These are single runs, not a sweep")
    assert "Given to every run: `trainer.max_epochs=5`" in markdown
    assert "| 09-30-00 | model=lenet_bn | completed | 1 |" in markdown  # the Runs table: dir, then its variant
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # a sweep's dir: its runs keep their dirs' names
    assert {v["variant"] for v in write_report(tmp_path)[0]} == set(typed)


def test_runs_keep_their_sweep_order_and_a_broken_metrics_json_is_listed(tmp_path):
    import json

    from cifar_ablate.report import collect_runs

    # Job 0 (the default baseline) has no metrics.json yet: it still comes first, so the baseline stays.
    # job_num 0 as written by an earlier launch; the latest launch (hydra.yaml) has it at 1.
    result = {"status": "completed", "test_acc": 0.7, "best_val_acc": 0.7, "epochs": 3, "train_seconds": 1.0,
              "job_num": 0}
    for num, name, metrics in ((0, "model=a", None), (1, "model=b", result), (2, "model=c", []),
                               (3, "model=d", {"status": "completed"}), (4, "model=e", '{"status": "compl')):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        if metrics is not None:
            (tmp_path / name / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    runs = collect_runs(tmp_path)
    assert [(r["run"], r["status"]) for r in runs] == [
        ("model=a", "unfinished"), ("model=b", "completed"), ("model=c", "unreadable"), ("model=d", "unreadable"),
        ("model=e", "unreadable")]
    assert "without test_acc" in runs[3]["error"]
    assert variant_rows(runs, baseline=None)[0]["variant"] == "model=a"


def test_curve_figure_has_labelled_axes_and_one_line_per_variant():
    fig = plot_curves({"model=a": [[0.3, 0.4, 0.5], [0.32, 0.41, 0.52]], "model=b": [[0.2, 0.3, 0.35]]},
                      "validation accuracy", "Validation accuracy per epoch")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "validation accuracy"
    assert [line.get_label() for line in ax.get_lines()] == ["model=a (n=2)", "model=b (n=1)"]
    assert len(ax.collections) == 1  # the ± std band, only where there are several seeds
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.31, 0.405, 0.51])
    assert ax.get_title() == ("Validation accuracy per epoch\n"
                              "mean over seeds, band: ± 1 std (n − 1); n: runs with a value")


def test_a_curve_whose_runs_stop_at_different_epochs_says_from_when_it_is_over_fewer(tmp_path):
    """A run that diverged after epoch 1 leaves epochs 2-3 of its variant's line to the others: the legend and the
    Curves table say so, where the line would read as over all its runs."""
    curves = {"val/acc": {"model=b": [{1: 0.3}, {1: 0.35, 2: 0.5, 3: 0.6}, {1: 0.4, 2: 0.55, 3: 0.62}]}}
    legend = plot_curves(curves["val/acc"], "validation accuracy", "Validation").axes[0].get_lines()[0].get_label()
    assert legend == "model=b (n=3, 2 from epoch 2)"
    runs = [run("model=b", 0, 0.1, status="diverged"), run("model=b", 1, 0.6), run("model=b", 2, 0.62)]
    markdown = summary_markdown(tmp_path, variant_rows(runs, None), runs,
                                readings=curve_readings(curve_rows(curves)))
    assert "| model=b (1 of 3 diverged; last epoch over 2 of 3) | 0.6100 (3) | 0.6100 |" in markdown
    assert "| model=b | completed/diverged (1 of 3 diverged) | 3 | 0.4400 ± 0.2946 |" in markdown
    assert ("Mean ± sample std (n − 1) over a variant's seeds with a result (n); a diverged run's accuracy counts in "
            "them and in the test.") in markdown


def test_a_short_curve_gets_a_tick_at_each_epoch_and_no_fractional_ones():
    fig = plot_curves({"model=a": [{1: 0.5}], "model=b": [{1: 0.6}]}, "validation accuracy", "one epoch")
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1"]
    fig = plot_curves({"model=a": [{1: 0.5, 2: 0.6, 3: 0.7}]}, "validation accuracy", "three epochs")
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "3"]


def test_a_diverged_variant_keeps_a_legend_entry_that_says_why_it_has_no_line():
    nan, inf = float("nan"), float("inf")
    fig = plot_curves({"lr=0.01": [[2.0, 1.5, 1.2]], "lr=1.0": [[nan], [inf]], "lr=0.5": [[2.1, nan], [2.0, 1.6]]},
                      "training loss (cross-entropy)", "Training loss per epoch",
                      notes={"lr=1.0": "2 diverged", "lr=0.5": "1 diverged"}, baseline="lr=0.01")
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert legend == ["lr=0.01 (baseline, n=1)", "lr=1.0 (n=2, 2 diverged): no finite value",
                      "lr=0.5 (n=2, 1 diverged, 1 from epoch 2): non-finite values not drawn"]
    assert list(fig.axes[0].get_lines()[2].get_ydata()) == pytest.approx([2.05, 1.6])


def test_curve_readings_find_each_variants_peak_and_last_epoch_over_its_runs():
    nan = float("nan")
    curves = {"val/acc": {"model=a": [[0.5, 0.7, 0.6], [0.5, 0.6, 0.6]], "model=b": [[0.4, nan], [0.4, 0.5, 0.55]]},
              "val/loss": {"model=a": [[1.2, 1.0, 1.4], [1.2, 1.1, 1.5]], "model=b": [[1.3, nan], [1.3, 1.2, 1.1]]},
              "train/loss_epoch": {"model=a": [[1.5, 1.0, 0.8], [1.5, 1.0, 0.6]], "model=b": [[], []]}}
    epochs, mean, std, n = mean_curve(curves["val/acc"]["model=b"])
    # A run that stopped or diverged counts only where it has a finite value.
    assert epochs == [1, 2, 3] and mean == pytest.approx([0.4, 0.5, 0.55]) and n == [2, 1, 1]
    assert std[0] == 0 and math.isnan(std[1])
    a, b = curve_readings(curve_rows(curves))
    assert (a["val_acc_best"], a["val_acc_best_epoch"], a["val_acc_last"]) == pytest.approx((0.65, 2, 0.6))
    assert (a["val_loss_best"], a["val_loss_best_epoch"], a["val_loss_last"]) == pytest.approx((1.05, 2, 1.45))
    assert (a["train_loss_last"], a["train_loss_epochs"]) == pytest.approx((0.7, 3))
    assert (b["val_acc_best"], b["val_acc_best_epoch"], b["val_loss_best_epoch"]) == pytest.approx((0.55, 3, 3))
    assert math.isnan(b["train_loss_last"]) and b["train_loss_best_epoch"] is None  # no curve logged
    rows = curve_rows(curves)
    assert {(r["metric"], r["epoch"], r["n"]) for r in rows if r["variant"] == "model=b"} == {
        (metric, epoch, n) for metric in ("val_acc", "val_loss") for epoch, n in ((1, 2), (2, 1), (3, 1))}


def test_a_several_seed_summary_with_nothing_testable_says_so(tmp_path):
    runs = [run("model=a", 0, 0.50), run("model=a", 1, 0.52), run("model=b", 0, 0.70),
            run("model=b", 1, None, "failed")]
    markdown = summary_markdown(tmp_path, variant_rows(runs, None), runs)
    assert "Nothing is tested: Welch's t-test needs at least 2 seeds" in markdown and "Test: Welch" not in markdown
    assert "| model=b | completed/failed | 1 | 0.7000 |" in markdown and "| untested (n < 2 or no spread) |" in markdown


def test_a_several_seed_sweep_without_a_single_result_is_not_called_a_one_seed_study(tmp_path):
    runs = [run("model=a", 0, None, "failed"), run("model=a", 1, None, "failed")]
    markdown = summary_markdown(tmp_path, variant_rows(runs, None), runs)
    assert "Nothing is tested" in markdown and "One seed per variant" not in markdown
    one_seed = [run("model=a", 0, 0.5)]  # but two planned: the others have not started
    assert "One seed per variant" not in summary_markdown(tmp_path, variant_rows(one_seed, None), one_seed,
                                                          seeds_planned=2)
    assert "One seed per variant" in summary_markdown(tmp_path, variant_rows(one_seed, None), one_seed)


def test_the_planned_runs_are_named_as_hydra_names_the_sweeps_run_dirs(tmp_path):
    """A preset's sweep (hydra.sweeper.params) times the command's; a sweep of the command replaces the preset's
    own over that key; values given once join neither (RunNaming)."""
    from cifar_ablate.report import planned_runs

    multirun = """hydra:
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
    params:
      optimizer.lr: 1.0,0.1
  overrides:
    task: [+experiment=lr_range, 'seed=0,1', trainer.accelerator=cpu, trainer.max_epochs=2]
  job:
    config:
      override_dirname:
        exclude_keys: [trainer.accelerator]
"""
    (tmp_path / "multirun.yaml").write_text(multirun)
    assert planned_runs(tmp_path) == ["optimizer.lr=1.0,seed=0", "optimizer.lr=1.0,seed=1", "optimizer.lr=0.1,seed=0",
                                      "optimizer.lr=0.1,seed=1"]
    (tmp_path / "multirun.yaml").write_text(multirun.replace("'seed=0,1'", "'optimizer.lr=0.5,0.05'"))
    assert planned_runs(tmp_path) == ["optimizer.lr=0.5", "optimizer.lr=0.05"]
    (tmp_path / "multirun.yaml").write_text(multirun.replace("basic_sweeper.BasicSweeper", "optuna.OptunaSweeper"))
    assert planned_runs(tmp_path) is None  # trials decided as the search goes
    (tmp_path / "multirun.yaml").unlink()
    assert planned_runs(tmp_path) is None


def test_curve_readings_take_the_first_epoch_of_a_tie_and_mark_diverged_variants(tmp_path):
    curves = {"val/acc": {"lr=0.01": [[0.1, 0.3, 0.3]], "lr=1e8": [[0.1, 0.1]]},
              "val/loss": {"lr=0.01": [[2.0, 1.5, 1.5]], "lr=1e8": [[7e18, 7e18]]},
              "train/loss_epoch": {"lr=0.01": [[2.1, 1.6, 1.4]], "lr=1e8": [[6.7e18, 9e26]]}}
    readings = curve_readings(curve_rows(curves))
    assert [(r["val_acc_best_epoch"], r["val_loss_best_epoch"]) for r in readings] == [(2, 2), (1, 1)]
    runs = [run("lr=0.01", 0, 0.3), run("lr=1e8", 0, 0.1, status="diverged")]
    markdown = summary_markdown(tmp_path, variant_rows(runs, None), runs, readings=readings)
    assert "| lr=0.01 | 0.3000 (2) | 0.3000 | 1.5000 (2) | 1.5000 | 1.4000 | 3 |" in markdown
    assert "| lr=1e8 (1 of 1 diverged) | 0.1000 (1) | 0.1000 | 7.000e+18 (1) | 7.000e+18 | 9.000e+26 | 2 |" in markdown


def test_a_loss_curve_spanning_orders_of_magnitude_is_drawn_on_a_log_axis():
    ax = plot_curves({"lr=0.01": [[2.0, 1.5]], "lr=3": [[2.3, 6.7e18]]}, "training loss", "Training loss").axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "training loss (log scale)"
    ax = plot_curves({"lr=0.01": [[2.0, 1.5]], "lr=3": [[2.3, 2.2]]}, "training loss", "Training loss").axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "training loss"


def test_a_curve_figure_with_nothing_to_draw_says_so_without_a_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        ax = plot_curves({"model=a": [[]]}, "validation accuracy", "nothing yet").axes[0]
    assert [t.get_text() for t in ax.texts] == ["no run has values to draw yet"] and ax.get_legend() is None


def error_bars(ax) -> bool:
    from matplotlib.container import ErrorbarContainer
    return any(isinstance(c, ErrorbarContainer) for c in ax.containers)


def test_bar_chart_has_one_bar_per_variant_with_error_bars():
    rows = variant_rows([run("model=a", 0, 0.5), run("model=a", 1, 0.6), run("model=b", 0, 0.7)], None)
    ax = plot_test_accuracy(rows).axes[0]
    assert len(ax.patches) == 2 and ax.get_ylabel().startswith("test accuracy")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["model=a (baseline)", "model=b"]
    assert ax.get_ylabel() == "test accuracy (mean ± std over seeds)" and error_bars(ax)
    (bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars.lines[2][0].get_segments()) == 1  # a's; b's one run has no spread, which a 0-wide bar would claim
    assert {round(t.xy[0]): t.get_text() for t in ax.texts} == {1: "n=1: no spread"}


def test_bar_chart_of_one_run_per_variant_says_so_and_draws_no_error_bars():
    ax = plot_test_accuracy(variant_rows([run("model=a", 0, 0.5), run("model=b", 0, 0.7)], None)).axes[0]
    assert ax.get_ylabel() == "test accuracy (one run each)" and not error_bars(ax)


def test_bar_chart_marks_diverged_runs_and_variants_without_a_result():
    rows = variant_rows([run("lr=0.01", 0, 0.5), run("lr=1.0", 0, 0.1, status="diverged"),
                         run("lr=1.0", 1, 0.12), run("lr=2.0", 0, None, status="failed")], None)
    ax = plot_test_accuracy(rows).axes[0]
    marks = {round(t.xy[0]): t.get_text() for t in ax.texts}
    assert marks == {0: "n=1: no spread", 1: "1 of 2 diverged", 2: "no result"}


def test_runs_limited_to_part_of_a_split_are_flagged_at_the_top_of_the_summary(tmp_path):
    import json

    from cifar_ablate.report import write_report

    runs = [run("model=a", 0, 0.50), run("model=b", 0, 0.70)]
    for r, limits in zip(runs, ("limit_train_batches: 20\n  limit_test_batches: 5\n", "limit_train_batches: 1.0\n")):
        run_dir = tmp_path / r["run"]
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 1\n  " + limits)
        (run_dir / "metrics.json").write_text(json.dumps({**r, "name": r["run"]}))
    _, _, markdown = write_report(tmp_path)
    assert ("Note: 1 of 2 runs used part of a split (trainer.limit_train_batches=20, "
            "trainer.limit_test_batches=5): their epochs, accuracies and losses are not those of the full study."
            ) in markdown
    (tmp_path / runs[0]["run"] / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 1\n")
    assert "Note:" not in write_report(tmp_path)[2]
    # an int is a batch count for Lightning: 1 is one batch, not all of them
    (tmp_path / runs[0]["run"] / ".hydra" / "config.yaml").write_text("trainer:\n  limit_val_batches: 1\n")
    (tmp_path / runs[1]["run"] / ".hydra" / "config.yaml").write_text("trainer:\n  max_steps: 3\n")
    assert ("Note: 1 of 2 runs used part of a split (trainer.limit_val_batches=1): their epochs, accuracies and "
            "losses are not those of the full study. Runs had a step limit (trainer.max_steps=3), which ends training "
            "before trainer.max_epochs if it comes first.") in write_report(tmp_path)[2]
    (tmp_path / runs[0]["run"] / ".hydra" / "config.yaml").write_text("data:\n  train_fraction: 0.05\n")
    (tmp_path / runs[1]["run"] / ".hydra" / "config.yaml").write_text("trainer:\n  max_steps: -1\n")
    assert ("Note: 1 of 2 runs trained on part of the training split (data.train_fraction=0.05)."
            in write_report(tmp_path)[2])
    (tmp_path / runs[0]["run"] / ".hydra" / "config.yaml").write_text("data:\n  train_fraction: 1.0\n")
    (tmp_path / runs[1]["run"] / ".hydra" / "config.yaml").write_text("data:\n  val_size: 0\n")
    assert ("Note: 1 of 2 runs validated on the test set (data.val_size=0): their best_val_acc and validation "
            "curves are test-set numbers, not a held-out choice.") in write_report(tmp_path)[2]


def test_the_summary_names_the_preset_and_settings_every_run_was_given(tmp_path):
    import json

    from cifar_ablate.report import write_report

    for r in (run("model=a", 0, 0.50), run("model=b", 0, 0.70)):
        (tmp_path / r["run"] / ".hydra").mkdir(parents=True)
        (tmp_path / r["run"] / ".hydra" / "overrides.yaml").write_text(
            f"- +experiment=lenet_variants\n- {r['run']}\n- data.train_fraction=0.05\n- data.root=/data\n"
            # a later command that skipped one of them as done rewrote its record, with another machine's keys
            + ("- trainer.accelerator=tpu\n" if r["run"] == "model=a" else "- trainer.accelerator=cpu\n"))
        (tmp_path / r["run"] / "metrics.json").write_text(json.dumps({**r, "name": r["run"]}))
    summary = write_report(tmp_path)[2]
    assert "Given to every run: `+experiment=lenet_variants` `data.train_fraction=0.05`\n" in summary
    import shutil
    shutil.rmtree(tmp_path / "model=b,seed=0")  # a sweep stopped before its second variant: model is still varied
    summary = write_report(tmp_path)[2]
    assert "Given to every run: `+experiment=lenet_variants` `data.train_fraction=0.05`\n" in summary


def test_a_seed_trained_again_under_a_new_name_counts_once(tmp_path):
    import csv
    import json

    from cifar_ablate.report import write_report

    # A one-seed sweep (model=a, model=b: seed 0), then the same sweep rerun into its dir with seed=0,1: seed 0
    # trains again as model=a,seed=0 (on the CPU to the same digits), beside the first runs.
    first = [(0, "model=a", 0, 0.50), (1, "model=b", 0, 0.60)]
    again = [(0, "model=a,seed=0", 0, 0.50), (1, "model=a,seed=1", 1, 0.56), (2, "model=b,seed=0", 0, 0.60),
             (3, "model=b,seed=1", 1, 0.64)]
    for num, name, seed, acc in first + again:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "completed", "test_acc": acc, "best_val_acc": acc, "epochs": 1, "train_seconds": 1.0,
             "seed": seed}))
    variants, _, markdown = write_report(tmp_path)
    rows = {v["variant"]: v for v in variants}
    assert (rows["model=a"]["n"], rows["model=a"]["runs"]) == (2, 3)
    assert rows["model=a"]["test_acc_mean"] == pytest.approx(0.53)  # (0.50 + 0.56) / 2, not (0.50 * 2 + 0.56) / 3
    assert rows["model=b"]["test_acc_std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert ("Not counted, as a seed counts once per variant: model=a,seed=0 (seed 0 again, as model=a), "
            "model=b,seed=0 (seed 0 again, as model=b)") in markdown
    with open(tmp_path / "runs.csv") as f:
        repeats = {r["run"]: r["repeats"] for r in csv.DictReader(f)}
    assert repeats["model=a,seed=0"] == "model=a" and repeats["model=a"] == repeats["model=a,seed=1"] == ""


def test_runs_that_computed_the_same_config_under_other_names_are_one_variant(tmp_path):
    import json

    from cifar_ablate.report import write_report

    # `-m optimizer.lr=0.1,0.01`, then `-m optimizer.lr=0.1 seed=0,1` into the same dir: the second command names
    # its runs seed=0 and seed=1 (what every run of a command shares is left out of the names), though they train
    # optimizer.lr=0.1, and seed 0 again.
    runs = [(0, "optimizer.lr=0.1", 0, 0.1, 0.50), (1, "optimizer.lr=0.01", 0, 0.01, 0.60),
            (0, "seed=0", 0, 0.1, 0.50), (1, "seed=1", 1, 0.1, 0.54)]
    for num, name, seed, lr, acc in runs:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (tmp_path / name / "run_config.json").write_text(json.dumps(
            {"optimizer.lr": lr, "seed": seed, "model._target_": "LeNet", "(choices)": {}, "(overrides)": [name]}))
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"status": "completed", "test_acc": acc, "best_val_acc": acc, "epochs": 1, "train_seconds": 1.0,
             "seed": seed}))
    variants, _, markdown = write_report(tmp_path)
    rows = {v["variant"]: v for v in variants}
    assert list(rows) == ["optimizer.lr=0.1", "optimizer.lr=0.01"]  # no "default" row beside its own baseline
    assert (rows["optimizer.lr=0.1"]["n"], rows["optimizer.lr=0.1"]["runs"]) == (2, 3)  # seed 0 counted once
    assert rows["optimizer.lr=0.1"]["test_acc_mean"] == pytest.approx(0.52)
    assert ("Counted as one variant, as their runs computed the same config (run_config.json, seed aside) under "
            "other names: seed=0, seed=1 (named default) as optimizer.lr=0.1") in markdown


def test_curves_follow_the_epochs_the_values_were_logged_in(tmp_path):
    """trainer.check_val_every_n_epoch=3 validates in epochs 3 and 6: its curve sits there, not at 1 and 2 (the
    report numbered values by position), and a logger switched on resume adds its epochs to the other's."""
    from torch.utils.tensorboard import SummaryWriter

    from cifar_ablate.report import read_curves
    # As Lightning writes them: every write carries the 0-based epoch at the same step, right after its values.
    writer = SummaryWriter(str(tmp_path))
    for epoch, step in enumerate((10, 20, 30, 40, 50, 60)):
        t = 1000.0 + 10 * epoch
        writer.add_scalar("epoch", epoch - 1, step, walltime=t - 5)  # an earlier write at the same step, another epoch
        writer.add_scalar("train/loss_epoch", 2.0 - epoch / 10, step, walltime=t)
        writer.add_scalar("epoch", epoch, step, walltime=t)
        if epoch % 3 == 2:
            writer.add_scalar("val/acc", 0.1 * epoch, step, walltime=t + 1)
            writer.add_scalar("epoch", epoch, step, walltime=t + 1)
    writer.close()
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss_epoch,val/acc\n6,70,1.35,\n6,70,,0.61\n")
    curves = read_curves(tmp_path)
    assert curves["val/acc"] == pytest.approx({3: 0.2, 6: 0.5, 7: 0.61})
    assert list(curves["train/loss_epoch"]) == [1, 2, 3, 4, 5, 6, 7]
    rows = curve_rows({"val/acc": {"model=a": [curves["val/acc"], {3: 0.3, 6: 0.4}]}})
    assert [(r["epoch"], round(r["mean"], 4), r["n"]) for r in rows] == [(3, 0.25, 2), (6, 0.45, 2), (7, 0.61, 1)]
    (reading,) = curve_readings(rows)
    assert (reading["val_acc_best"], reading["val_acc_best_epoch"], reading["val_acc_epochs"]) == pytest.approx(
        (0.61, 7, 7))
    line = plot_curves({"model=a": [curves["val/acc"]]}, "validation accuracy", "Validation").axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [3, 6, 7]


def test_a_p_value_too_small_for_three_places_reads_as_below_them(tmp_path):
    runs = [run("model=a", 0, 0.50), run("model=a", 1, 0.51), run("model=a", 2, 0.50),
            run("model=b", 0, 0.90), run("model=b", 1, 0.91), run("model=b", 2, 0.90)]
    markdown = summary_markdown(tmp_path, variant_rows(runs, None), runs)
    assert "| 0.4000 | < 0.001 | < 0.001 | yes |" in markdown and "0.000 |" not in markdown


SEARCH = ["model.dropout=0.30138168803582194,optimizer.lr=0.022881136684755242",
          "model.dropout=0.32294705653332806,optimizer.lr=4.9501595537331986e-05",
          "model.dropout=0.48183138025051464,optimizer.lr=0.012132675491046142"]


def search_runs():
    runs = [{**run(name, 0, acc), "run": name, "best_val_acc": val, "job_num": num}
            for num, (name, acc, val) in enumerate(zip(SEARCH, (0.40, 0.45, 0.30), (0.38, 0.47, 0.31)))]
    return runs + [{"run": "model.dropout=0.1,optimizer.lr=0.2", "variant": "model.dropout=0.1,optimizer.lr=0.2",
                    "status": "failed", "job_num": 3},
                   # Diverged: the objective gave the sweeper no value (Optuna: a failed trial), whatever it validated.
                   {**run("model.dropout=0.2,optimizer.lr=0.9", 0, 0.1, status="diverged"),
                    "run": "model.dropout=0.2,optimizer.lr=0.9", "best_val_acc": 0.6, "job_num": 4}]


def test_a_searchs_trials_are_ranked_by_the_objective_and_not_tested_against_trial_0(tmp_path):
    runs = search_runs()
    rows = variant_rows(runs, baseline=None, search=True)
    assert [(r["job"], r["best_val_acc_mean"]) for r in rows[:3]] == [(1, 0.47), (0, 0.38), (2, 0.31)]
    assert [(r["job"], r["status"]) for r in rows[3:]] == [(3, "failed"), (4, "diverged")]  # no value: last
    assert not any(r["baseline"] for r in rows) and all(math.isnan(r["p_value"]) for r in rows)
    assert all(math.isnan(r["delta_vs_baseline"]) for r in rows)
    assert list(rows[0])[-1] == "job"  # summary.csv's new column comes last: the earlier ones keep their places
    markdown = summary_markdown(tmp_path, rows, runs, search="OptunaSweeper")
    assert "| 1 | 1 | model.dropout=0.323, optimizer.lr=4.95e-05 | completed | 0.4700 | 0.4500 | 3 | 1.0 |" in markdown
    assert "| 4 | 3 | model.dropout=0.1, optimizer.lr=0.2 | failed |" in markdown
    assert "| 5 | 4 | model.dropout=0.2, optimizer.lr=0.9 | diverged | 0.6000 |" in markdown
    assert "A search (OptunaSweeper)" in markdown and "not tested against each other" in markdown
    assert "baseline" not in markdown and "Welch" not in markdown and "Add `seed=0,1,2` to the sweep" not in markdown
    assert SEARCH[1] in markdown  # the Runs table names each run dir in full


def test_a_searchs_long_names_stay_inside_the_figures(tmp_path):
    rows = variant_rows(search_runs(), baseline=None, search=True)
    fig = plot_test_accuracy(rows)
    fig.canvas.draw()
    ax, figure_box = fig.axes[0], fig.bbox
    names = [t.get_text() for t in ax.get_yticklabels()]  # sideways: the names to the left of the bars
    assert names[0] == "model.dropout=0.323, optimizer.lr=4.95e-05" and len(ax.patches) == 5
    for label in ax.get_yticklabels():
        box = label.get_window_extent()
        assert box.x0 >= figure_box.x0 and box.x1 <= figure_box.x1, label.get_text()
    fig = plot_curves({name: [[0.2, 0.3]] for name in SEARCH}, "validation accuracy", "Validation")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert [t.get_text() for t in ax.get_legend().get_texts()][1] == "model.dropout=0.323, optimizer.lr=4.95e-05 (n=1)"
    assert legend.y1 < axes_box.y0 and legend.y0 >= fig.bbox.y0  # below the axes, inside the figure


def test_rounded_names_that_would_collide_stay_whole():
    fig = plot_test_accuracy(variant_rows([run("lr=0.0123401", 0, 0.5), run("lr=0.0123402", 0, 0.6)], None))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lr=0.0123401 (baseline)", "lr=0.0123402"]
    rows = variant_rows([run("lr=0.01", 0, 0.5), run("lr=0.02", 0, 0.6)], "lr=0.02")  # a baseline named
    labels = [t.get_text() for t in plot_test_accuracy(rows).axes[0].get_xticklabels()]
    assert labels == ["lr=0.01", "lr=0.02 (baseline)"]


def test_a_report_by_hand_on_a_missing_dir_or_one_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    from cifar_ablate.report import main
    for target, message in ((tmp_path / "typo", "no such directory"),
                            (tmp_path, "no runs here (expected sub-folders with a .hydra/ config)")):
        with pytest.raises(SystemExit) as stop:
            main([str(target)])
        assert stop.value.code == 2 and capsys.readouterr().err == f"error: {target}: {message}\n"
