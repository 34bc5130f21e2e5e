"""Wall time of whole studies, from the start of the command to the sweep's summary.md.

--preset: one preset's sweep with Hydra's basic launcher (one trial after another), then with the
          parallel launcher (--jobs trials at once);
--concurrent N: one LeNet trial alone (a one-trial sweep), then N at once (seeds 0..N-1, the parallel
          launcher), the "many small trials on one GPU" case.

Every command must exit 0 with all its runs completed, or the script stops without writing a figure.

    python bench/study_wall_time.py --root data --preset lenet_variants --jobs 2 --out docs/performance.md
    python bench/study_wall_time.py --root data --trainer gpu --preset lenet_variants --jobs 3 \\
        --concurrent 4 --out docs/performance.md
"""
import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from compare_loops import machine, run_cifar_ablate, write_section

LENET = ["model=lenet", "optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.9", "data.batch_size=64"]


def timed(args, overrides: list[str], out_dir: Path) -> tuple[float, list[dict], str]:
    """A sweep of cifar_ablate into out_dir with this benchmark's trainer, data and extra overrides."""
    return run_cifar_ablate([*overrides, f"trainer={args.trainer}", f"data.root={Path(args.root).resolve()}",
                             *args.override], out_dir)


def peak_memory(runs: list[dict]) -> str:
    peaks = [r["peak_gpu_memory_mb"] for r in runs if r.get("peak_gpu_memory_mb") is not None]
    return f"{max(peaks):,.0f}" if peaks else "–"


def study(args, work: Path) -> str:
    rows = []
    for label, launcher in (("basic (one trial after another)", ["hydra/launcher=basic"]),
                            (f"parallel ({args.jobs} trials at a time)",
                             ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.jobs}"])):
        seconds, runs, shown = timed(args, [f"+experiment={args.preset}", *launcher], work / launcher[0].split("=")[1])
        accuracies = ", ".join(f"{r['test_acc']:.4f}" for r in sorted(runs, key=lambda r: r["name"]))
        rows.append(f"| {label} | {seconds:.1f} | {len(runs)} | {accuracies} | {peak_memory(runs)} | `python {shown}` |")
    return "\n".join([
        f"## {args.preset}, command to summary ({args.trainer})", "",
        f"Measured {datetime.date.today()} on {machine(args.device)}.",
        f"Command: `python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`", "",
        "| launcher | wall s | runs | test acc per run (by name) | peak GPU MiB (largest run) | command |",
        "|---|---|---|---|---|---|", *rows])


def concurrent(args, work: Path) -> str:
    # Both as sweeps (the one alone with the basic launcher), so both pay for a sweep's start and report.
    one_seconds, one, one_shown = timed(args, ["-m", *LENET, "seed=0", "hydra/launcher=basic"], work / "one")
    seeds = ",".join(str(s) for s in range(args.concurrent))
    many_seconds, many, many_shown = timed(
        args, ["-m", *LENET, f"seed={seeds}", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.concurrent}"],
        work / "many")
    train_one = one[0]["train_seconds"]
    train_many = max(r["train_seconds"] for r in many)
    return "\n".join([
        f"## {args.concurrent} LeNet trials at once vs one alone ({args.trainer})", "",
        f"Measured {datetime.date.today()} on {machine(args.device)}.",
        f"Command: `python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`", "",
        "| | wall s, command to end | train s (slowest trial) | peak GPU MiB (largest run) | command |",
        "|---|---|---|---|---|",
        f"| one trial | {one_seconds:.1f} | {train_one:.1f} | {peak_memory(one)} | `python {one_shown}` |",
        f"| {args.concurrent} trials at once | {many_seconds:.1f} | {train_many:.1f} | {peak_memory(many)} | "
        f"`python {many_shown}` |", "",
        f"{args.concurrent} at once / one alone: {many_seconds / one_seconds:.2f} x the wall time, "
        f"{train_many / train_one:.2f} x the training time."])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--trainer", choices=["cpu", "gpu"], default="cpu", help="the trainer preset of every run")
    parser.add_argument("--preset", help="time this preset's sweep, serially and with the parallel launcher")
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time under the parallel launcher")
    parser.add_argument("--concurrent", type=int, default=0, help="time N LeNet trials at once against one")
    parser.add_argument("--override", action="append", default=[], help="added to every command (repeatable)")
    parser.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary dir)")
    parser.add_argument("--out", type=Path, help="markdown file to write the tables into")
    args = parser.parse_args()
    if not args.preset and not args.concurrent:
        parser.error("nothing to time: give --preset and/or --concurrent")
    args.device = "cuda" if args.trainer == "gpu" else "cpu"

    steps = []
    if args.concurrent:  # the shorter measurement first
        steps.append((f"bench:concurrent-{args.trainer}", concurrent, "concurrent"))
    if args.preset:
        steps.append((f"bench:study-{args.trainer}", study, "study"))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        for marker, measure, folder in steps:
            # Each table is written once measured, so one that a later step's failure or timeout stops survives.
            text = measure(args, work / folder)
            print(text + "\n", flush=True)
            if args.out:
                write_section(args.out, text, marker=marker)


if __name__ == "__main__":
    main()
