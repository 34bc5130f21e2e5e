"""The benchmark scripts (`make bench`, bench/gpu_session.sh) run end to end and write honest tables.
They time nothing here: the fixture is tiny and speed is never asserted."""
import re

from conftest import REPO, run_cli


def run_bench(script: str, *args: str, cwd):
    return run_cli(*args, cwd=cwd, file=REPO / "bench" / script, timeout=600)


def test_compare_loops_table_and_cifar_ablate_matches_the_bare_loop(tmp_path, cifar_root):
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nkept text\n")
    result = run_bench("compare_loops.py", "--root", str(cifar_root), "--epochs", "2", "--repeats", "1",
                       "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "kept text" in text and "<!-- bench:cpu -->" in text and "<!-- /bench:cpu -->" in text
    accuracy = dict(re.findall(r"^\| \((\w)\) .* \| ([\d.]+) \|$", text, re.M))  # loop -> test acc
    assert set(accuracy) == {"a", "b", "c"}
    # Same initial weights, same data order, same arithmetic: cifar_ablate's default path trains exactly
    # the model the bare loop trains.
    assert accuracy["c"] == accuracy["b"]
    assert re.search(r"\| c/b: .* \| \d+\.\d\d \| \d+\.\d\d \|", text)
    assert re.search(r"^\| c/b \| \d+\.\d\d \| \d+\.\d\d \|$", text, re.M)  # the paired ratio, one repeat


def test_study_wall_time_writes_both_tables(tmp_path, cifar_root):
    out = tmp_path / "performance.md"
    # One job at a time keeps joblib in-process (no workers to start): the same commands, cheaper here;
    # tests/test_launchers.py runs trials truly at once.
    result = run_bench("study_wall_time.py", "--root", str(cifar_root), "--preset", "lenet_variants", "--jobs", "1",
                       "--concurrent", "1", "--override", "trainer.max_epochs=1", "--override", "data.val_size=50",
                       "--keep", str(tmp_path / "runs"), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    study = text[text.index("<!-- bench:study-cpu -->"):text.index("<!-- /bench:study-cpu -->")]
    rows = [line for line in study.splitlines() if line.startswith(("| basic", "| parallel"))]
    assert len(rows) == 2 and all(row.split(" | ")[2] == "3" for row in rows)  # 3 runs under each launcher
    assert len(list((tmp_path / "runs" / "study" / "parallel").glob("*/metrics.json"))) == 3
    concurrent = text[text.index("<!-- bench:concurrent-cpu -->"):text.index("<!-- /bench:concurrent-cpu -->")]
    assert re.search(r"1 at once / one alone: \d+\.\d\d x the wall time", concurrent)
    assert len(list((tmp_path / "runs" / "concurrent" / "many").glob("*/metrics.json"))) == 1


def test_study_wall_time_writes_nothing_when_a_run_fails(tmp_path, cifar_root):
    out = tmp_path / "performance.md"
    result = run_bench("study_wall_time.py", "--root", str(cifar_root), "--concurrent", "2",
                       "--override", "trainer.max_epochs=1", "--override", "data.val_size=50",
                       "--override", "optimizer.lr=-1", "--out", str(out), cwd=tmp_path)
    assert result.returncode != 0 and "error:" in result.stderr
    assert not out.exists()
