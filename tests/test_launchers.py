"""Sweeps through the launcher presets the project ships."""
import csv
import json

from conftest import FAST, run_cli


def test_parallel_launcher_runs_trials_at_once_and_summarizes(tmp_path, cifar_root):
    result = run_cli("-m", "hydra/launcher=parallel", "model=lenet,lenet_bn", f"data.root={cifar_root}", *FAST,
                     "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    for name in ("model=lenet", "model=lenet_bn"):
        assert json.loads((sweep / name / "metrics.json").read_text())["status"] == "completed"
    assert [r["variant"] for r in csv.DictReader(open(sweep / "summary.csv"))] == ["model=lenet", "model=lenet_bn"]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # the trials really went through joblib
