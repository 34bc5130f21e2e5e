#!/usr/bin/env bash
# The GPU measurements, each stage sized for one device call (10 minutes at most). Run from the repo root
# on the GPU machine after `make device-bundle` here put the Hydra wheels into .whl/ and the data into
# .device_data/ (both git-ignored; carry them):
#   bash bench/gpu_session.sh bench                  # speed: loops side by side, lenet_variants, 4 trials at once, resnet20_fast
#   bash bench/gpu_session.sh studies lenet_variants batchnorm ...   # studies over seeds 0,1,2
# What it writes goes to $OUT (default outputs/gpu_session): performance.md holds the tables in the
# format of docs/performance.md; runs.tgz holds every run's metrics.json, logs and the sweeps' reports.
set -euo pipefail
stage=${1:?usage: bash bench/gpu_session.sh bench | studies <preset>...}
shift
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -f data/cifar-10-batches-py/test_batch ] ||
    python3 .device_data/make_cifar10.py data --tar .device_data/cifar10-jpeg.tar.gz > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
runs=/tmp/gpu_session_runs
rm -rf "$runs" && mkdir -p "$runs"

case $stage in
bench)
    python3 bench/compare_loops.py --root data --epochs 3 --repeats 2 --device cuda --out "$OUT/performance.md"
    python3 bench/study_wall_time.py --root data --trainer gpu --preset lenet_variants --jobs 3 --concurrent 4 \
        --keep "$runs/wall_time" --out "$OUT/performance.md"
    python3 -m cifar_ablate +experiment=resnet20_fast trainer=gpu hydra.run.dir="$runs/resnet20_fast" \
        2>&1 | tail -n 3
    ;;
studies)
    for preset in "$@"; do
        start=$(date +%s)
        # 4 trials at a time share the GPU.
        python3 -m cifar_ablate -m +experiment="$preset" seed=0,1,2 trainer=gpu hydra/launcher=parallel \
            hydra.launcher.n_jobs=4 hydra.sweep.dir="$runs/$preset" > "$runs/$preset.log" 2>&1 || true
        echo "$preset: $(( $(date +%s) - start )) s, command to summary" | tee -a "$OUT/wall_times.txt"
    done
    ;;
*)
    echo "error: unknown stage $stage (bench or studies)" >&2
    exit 2
    ;;
esac
tar czf "$OUT/runs.tgz" --exclude='*.ckpt' -C "$runs" .
# The reply carries the end of the output: the tables last.
cat "$OUT"/performance.md "$OUT"/wall_times.txt 2>/dev/null || true
