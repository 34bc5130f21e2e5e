# Two commands set everything up on a fresh machine:
#   make run    create .venv if absent, get CIFAR-10 into data/ if absent, run the default experiment
#   make test   create .venv if absent, run the test suite (and a real-data check when ../shared has the data)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := data
SHARED_TAR := ../shared/data/cifar10-jpeg.tar.gz
ARGS ?=

.PHONY: run test env data real-data-check lock clean bench device-bundle

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

env: $(BIN)/.installed

# The real images from ../shared when present (a JPEG re-encoding), else the official download.
$(DATA)/cifar-10-batches-py/test_batch: | $(BIN)/.installed
	if [ -f $(SHARED_TAR) ]; then $(BIN)/python ../shared/data/make_cifar10.py $(DATA) --tar $(SHARED_TAR); \
	else $(BIN)/python -m cifar_ablate.data download --root $(DATA); fi

data: $(DATA)/cifar-10-batches-py/test_batch

run: env data
	$(BIN)/python -m cifar_ablate $(ARGS)

# --durations: the slowest tests in every CI log (the suite must stay under 10 minutes).
test: env
	$(BIN)/python -m pytest --durations=15
	@if [ -f $(SHARED_TAR) ]; then $(MAKE) --no-print-directory real-data-check; \
	else echo "real-data check skipped: $(SHARED_TAR) is absent"; fi

# One short LeNet epoch on the real images must land well above chance (10%).
real-data-check: env data
	rm -rf outputs/real-data-check
	$(BIN)/python -m cifar_ablate model=lenet trainer.max_epochs=1 hydra.run.dir=outputs/real-data-check
	$(BIN)/python -c "import json, sys; m = json.load(open('outputs/real-data-check/metrics.json')); \
	print(f'real-data check: test_acc {m[\"test_acc\"]:.4f} after 1 epoch'); sys.exit(m['test_acc'] <= 0.35)"

# Re-pin every package version after changing dependencies in pyproject.toml.
lock:
	rm -rf /tmp/cifar_ablate_lock && $(PYTHON) -m venv /tmp/cifar_ablate_lock
	/tmp/cifar_ablate_lock/bin/pip install --quiet 'torch==2.14.1' 'torchvision==0.29.2' -e '.[dev]'
	(head -3 constraints.txt; /tmp/cifar_ablate_lock/bin/pip freeze --exclude-editable) > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) outputs/runs outputs/multirun

# Speed, side by side (not a test), into docs/performance.md: homework loop vs bare loop vs cifar_ablate,
# then the lenet_variants study from command to summary, serially and 2 trials at a time.
bench: env data
	$(BIN)/python bench/compare_loops.py --root $(DATA) --epochs 3 --repeats 4 --out docs/performance.md
	$(BIN)/python bench/study_wall_time.py --root $(DATA) --preset lenet_variants --jobs 2 --out docs/performance.md

# What a GPU session carries to the device machine for bench/gpu_session.sh (both folders git-ignored):
# the pure-Python packages its image lacks, at our pinned versions, and the data tarball with its converter.
device-bundle: env
	rm -rf .bundle.tmp && mkdir -p .bundle.tmp/.whl .bundle.tmp/.device_data
	$(BIN)/pip wheel --quiet --no-deps -w .bundle.tmp/.whl \
		$$(grep -E '^(hydra-core|omegaconf|antlr4-python3-runtime|hydra-joblib-launcher)==' constraints.txt)
	cp $(SHARED_TAR) $(dir $(SHARED_TAR))make_cifar10.py .bundle.tmp/.device_data/
	rm -rf .whl .device_data && mv .bundle.tmp/.whl .bundle.tmp/.device_data . && rmdir .bundle.tmp
