#!/usr/bin/env bash
# The GPU measurements, each stage sized for one device call (10 minutes at most). Run from the repo root
# on the GPU machine after `make device-bundle` here put the Hydra wheels into .whl/ and the data into
# .device_data/ (both git-ignored; carry them):
#   bash bench/gpu_session.sh bench                  # speed: resnet20_fast, loops side by side, 4 LeNet trials at once vs one
#   bash bench/gpu_session.sh study_time             # lenet_variants from command to summary, serially and 3 at a time
#   bash bench/gpu_session.sh studies lenet_variants batchnorm ...   # studies over seeds 0,1,2, JOBS (8) trials at a time
#   bash bench/gpu_session.sh runs "model=lenet trainer.max_epochs=3" "model=lenet compile=true ..."   # one run each
# Stages can follow each other in one call (each with its own BUDGET); their files accumulate in $OUT.
# Two at once (one in the background, `wait` for it) need different TAGs, which name their runs.tgz and
# memory samples. OVERRIDES are added to every study's command (e.g. OVERRIDES=trainer.max_epochs=50).
# A study longer than one call continues in the next: KEEP_CKPT=1 returns the stage's sweeps with their
# checkpoints as $OUT/sweeps$TAG.tgz; copy it into .device_resume/ (git-ignored), carry that folder, and
# give the next call CONTINUE=.device_resume/sweeps.tgz with the same studies: each sweep then skips its
# finished runs and resumes the others from their last epoch (see docs/reliability.md).
# What it writes goes to $OUT (default outputs/gpu_session): performance.md holds the tables in the
# format of docs/performance.md; runs.tgz every run's metrics.json, logs and the sweeps' reports; the
# logs and nvidia-smi's memory samples sit beside them. They are written also when a step fails or the
# stage runs out of time (each step gets what is left of BUDGET seconds, default 540).
set -uo pipefail
stage=${1:?usage: bash bench/gpu_session.sh bench | study_time | studies <preset>... | runs <overrides>...}
shift
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
deadline=$((SECONDS + ${BUDGET:-540}))
left() { echo $((deadline - SECONDS > 0 ? deadline - SECONDS : 1)); }
all_runs=/tmp/gpu_session_runs
mkdir -p "$all_runs"
runs=$(mktemp -d "$all_runs/$stage${TAG:-}.XXX")  # a folder of its own, also when a stage runs twice
tag=${TAG:-}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
# What nvidia-smi sees per process (CUDA context included), every half second, for the memory target.
nvidia-smi --query-compute-apps=pid,used_memory --format=csv -lms 500 >> "$OUT/gpu_memory$tag.csv" 2>/dev/null &
sampler=$!
finish() {
    kill "$sampler" 2>/dev/null
    tar czf "$OUT/runs$tag.tgz" --exclude='*.ckpt' -C "$all_runs" .
    if [ -n "${KEEP_CKPT:-}" ]; then tar czf "$OUT/sweeps$tag.tgz" -C "$runs" .; fi
    # The reply carries the end of the output: the tables last.
    cat "$OUT"/performance.md "$OUT"/wall_times.txt "$OUT"/runs.md "$OUT"/resnet20_fast.json 2>/dev/null
}
trap finish EXIT

# The machine's set-up, once: a stage started beside another waits here until the first has done it.
exec 9> /tmp/gpu_session.lock
flock 9
if [ ! -f /tmp/site/.installed ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        touch /tmp/site/.installed || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import sys, torch, torchvision, lightning, hydra, omegaconf
print('python', sys.version.split()[0], *(f'{m.__name__} {m.__version__}' for m in (torch, torchvision, lightning, hydra, omegaconf)))" |
    tee "$OUT/versions.txt"
if [ ! -f data/.converted ]; then
    python3 .device_data/make_cifar10.py data --tar .device_data/cifar10-jpeg.tar.gz > /dev/null && touch data/.converted ||
        exit 1
fi
flock -u 9
set -f  # overrides such as a=[1,2] are Hydra's, not file patterns

case $stage in
bench)
    # The 60 s / 90% target first, so a slow later step cannot cost it.
    timeout "$(left)" python3 -m cifar_ablate +experiment=resnet20_fast trainer=gpu \
        hydra.run.dir="$runs/resnet20_fast" > "$OUT/resnet20_fast.log" 2>&1
    cp "$runs/resnet20_fast/metrics.json" "$OUT/resnet20_fast.json"
    timeout "$(left)" python3 bench/compare_loops.py --root data --epochs 3 --repeats 2 --device cuda \
        --out "$OUT/performance.md" 2>&1 | tee "$OUT/bench.log"
    timeout "$(left)" python3 bench/study_wall_time.py --root data --trainer gpu --concurrent 4 \
        --keep "$runs/wall_time" --out "$OUT/performance.md" 2>&1 | tee -a "$OUT/bench.log"
    ;;
study_time)
    # The serial sweep alone took 222 s on the H100 of session 4: too long to share a call with bench.
    timeout "$(left)" python3 bench/study_wall_time.py --root data --trainer gpu --preset lenet_variants --jobs 3 \
        --keep "$runs/wall_time" --out "$OUT/performance.md" 2>&1 | tee -a "$OUT/bench.log"
    ;;
studies)
    if [ -n "${CONTINUE:-}" ]; then tar xzf "$CONTINUE" -C "$runs" || exit 1; fi
    for preset in "$@"; do
        start=$SECONDS
        # JOBS trials at a time share the GPU (8 LeNet trials each trained in 1.34x the time of one nearly alone on an H100).
        timeout "$(left)" python3 -m cifar_ablate -m +experiment="$preset" seed=0,1,2 trainer=gpu \
            hydra/launcher=parallel hydra.launcher.n_jobs="${JOBS:-8}" ${OVERRIDES:-} hydra.sweep.dir="$runs/$preset" > "$runs/$preset.log" 2>&1
        status=$?
        completed=$(find "$runs/$preset" -name metrics.json -exec grep -l '"status": "completed"' {} + 2>/dev/null | wc -l)
        echo "$preset${OVERRIDES:+ $OVERRIDES}: exit $status, ${JOBS:-8} at a time, $completed runs completed, $((SECONDS - start)) s from command to summary" |
            tee -a "$OUT/wall_times.txt"
    done
    ;;
runs)
    [ -f "$OUT/runs.md" ] || printf '%s\n' "| overrides (trainer=gpu) | status | epochs | train s | s / epoch: first, median of the rest | test acc | peak GPU MiB |" \
        "|---|---|---|---|---|---|---|" > "$OUT/runs.md"
    i=0
    for overrides in "$@"; do
        i=$((i + 1))
        # shellcheck disable=SC2086  # each argument is a space-separated list of overrides
        timeout "$(left)" python3 -m cifar_ablate $overrides trainer=gpu hydra.run.dir="$runs/$i" > "$runs/$i.log" 2>&1
        python3 - "$runs/$i/metrics.json" "$overrides" >> "$OUT/runs.md" <<'PY'
import json, statistics, sys
path, overrides = sys.argv[1:]
try:
    m = json.load(open(path))
except (OSError, ValueError):
    print(f"| {overrides} | no metrics.json | | | | | |")
    sys.exit()
e = m.get("epoch_seconds") or [float("nan")]
rest = f"{statistics.median(e[1:]):.2f}" if len(e) > 1 else "–"
peak = m.get("peak_gpu_memory_mb")
acc = m.get("test_acc")
print(f"| {overrides} | {m['status']} | {m.get('epochs')} | {m.get('train_seconds')} | {e[0]:.2f}, {rest} | "
      f"{'–' if acc is None else f'{acc:.4f}'} | {peak if peak is not None else '–'} |")
PY
    done
    ;;
*)
    echo "error: unknown stage $stage (bench, study_time, studies or runs)" >&2
    exit 2
    ;;
esac
