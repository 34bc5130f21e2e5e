"""Shared fixtures: a tiny CIFAR-10 tree in the exact official layout, and a way to run the CLI."""
import contextlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

# One compute thread per process: the suite runs tests side by side (pytest -n auto), each starting
# CLI processes; threads over the tiny fixture only contend. Inherited by every process a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A suite started in the background by a shell without job control (`make test &` in a script) inherits SIGINT
# ignored, and so would every CLI run it starts, so the Ctrl+C tests would see no Ctrl+C: runs start with
# SIGINT as a terminal gives it (a handler set here is reset to the default in each child).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 60   # images in each of the 5 training batches
TEST_IMAGES = 50


def fixture_images(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """Known pixels: image i has label i % 10 and every pixel of channel c equal to
    (37 * (i + offset) + 80 * c + 25 * label) % 256, plus a bright class-specific row, so a small
    model can learn the labels and every statistic can be computed by hand."""
    data = np.zeros((n, 3, 32, 32), np.uint8)
    labels = [(i + offset) % 10 for i in range(n)]
    for i, y in enumerate(labels):
        for c in range(3):
            data[i, c] = (37 * (i + offset) + 80 * c + 25 * y) % 256
        data[i, :, 3 * y] = 255
    return data.reshape(n, 3072), labels


def write_cifar_tree(root: Path, per_batch: int = PER_BATCH, test_images: int = TEST_IMAGES) -> Path:
    """Write <root>/cifar-10-batches-py exactly as the official python release lays it out."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        data, labels = fixture_images(per_batch, b * per_batch)
        batch = {"batch_label": f"training batch {b + 1} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    data, labels = fixture_images(test_images, 10_000)
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
         "filenames": [f"test_{i}.png" for i in range(test_images)]}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}, protocol=2))
    return folder


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_tree(root)
    return root


def made_once(tmp_path_factory, name: str, make) -> tuple[Path, dict]:
    """`make(folder)` (returning a JSON-able dict, e.g. `process_record(run_cli(...))`) once per test session, also
    when xdist spreads the tests that share it over workers: the first makes it under a lock, the others wait; each
    gets the folder and what `make` returned. (xdist's --dist loadgroup would keep them on one worker, but with
    pytest 9.2 it silently stops grouping: pytest-xdist issue 1386.)"""
    import json
    import traceback

    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root  # shared by the workers
    folder, done = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder.mkdir()
            try:
                made = make(folder)
            except Exception:  # noqa: BLE001  (recorded: the other tests fail at once, none reuses a half-made folder)
                made = {"made_once_error": traceback.format_exc()}
            done.write_text(json.dumps(made))
    made = json.loads(done.read_text())
    if "made_once_error" in made:
        pytest.fail(f"making {name} (shared by several tests) failed:\n{made['made_once_error']}")
    return folder, made


def process_record(result: subprocess.CompletedProcess) -> dict:
    """What a test reads of a finished CLI run, as made_once can keep it."""
    return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


# Settings that make a CLI run take seconds on the fixture.
FAST = ["trainer.max_epochs=1", "data.val_size=50", "data.batch_size=32", "trainer.accelerator=cpu"]


def run_cli(*args: str, cwd: Path, module: str = "cifar_ablate", script: Optional[str] = None,
            file: Optional[Path] = None, env: Optional[dict] = None, timeout: int = 300,
            fresh: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` as a user types it, in `cwd`; given `script`, `python -c <script> args`
    (a script that patches cifar_ablate to inject a fault or a signal, then calls its entry point); given
    `file`, `python <file> args` (a benchmark, or a patching script that spawned workers must import).
    The process is forked from a Python that has imported the heavy libraries already (tests/warm_python.py);
    `fresh=True` starts a new interpreter, for what depends on import order or on being started from argv."""
    full_env = {**users_env(), **(env or {})}
    program = [str(file)] if file is not None else ["-c", script] if script is not None else ["-m", module]
    command = [sys.executable, *program, *args]
    if fresh or any(key.startswith(READ_AT_IMPORT) for key in env or {}):
        return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return run_warm(command, program, cwd, full_env, timeout)


def users_env() -> dict:
    """This process's environment as a user's shell gives it to a command: errors as users see them (no
    HYDRA_FULL_ERROR), and this checkout's cifar_ablate first on the path."""
    return {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "PYTHONPATH": str(REPO)}


# Variables read at start-up or when a library loads: a run that sets them needs a fresh interpreter.
READ_AT_IMPORT = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "PYTHON", "TORCH", "CUDA", "LD_", "MPL", "LANG", "LC_")
_warm_server: list = []


def warm_server_path() -> str:
    """Start tests/warm_python.py for this test process (once), and return its socket."""
    if not _warm_server:
        import atexit
        import shutil
        import tempfile
        folder = tempfile.mkdtemp(prefix="cifar_ablate_warm_")
        server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("warm_python.py")), f"{folder}/socket"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=users_env())
        ready = server.stdout.readline()
        os.set_blocking(server.stderr.fileno(), False)
        printed = server.stderr.read() or b""
        # A warning printed by the imports would be printed by every fresh run, and by no forked one.
        assert ready == b"ready\n" and not printed, f"warm_python.py did not start cleanly: {ready!r} {printed!r}"
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        atexit.register(server.stdin.close)  # its stdin closing ends it
        _warm_server.append(f"{folder}/socket")
    return _warm_server[0]


def run_warm(command: list, program: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run(command, cwd, env, capture_output=True, text=True, timeout), by a fork of the warm server:
    the output is read until every process holding it has closed it, and the child is killed on any exception."""
    import json
    import locale
    import selectors
    import socket
    import time
    if not Path(cwd).is_dir():
        raise FileNotFoundError(f"cwd {cwd} is not a directory")
    kind, target = (program[0], program[1]) if program[0] in ("-m", "-c") else ("file", program[0])
    request = json.dumps({"program": [kind, target], "args": command[1 + len(program):], "cwd": str(cwd),
                          "env": env}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = None
    output = {out_r: b"", err_r: b""}
    with open(os.devnull) as stdin, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, \
            selectors.DefaultSelector() as pending:
        try:
            conn.connect(warm_server_path())
            conn.settimeout(timeout)
            sent = socket.send_fds(conn, [request], [stdin.fileno(), out_w, err_w])
            conn.sendall(request[sent:])
            os.close(out_w)
            os.close(err_w)
            out_w = err_w = None
            replies = conn.makefile("rb")
            pid = int(replies.readline())
            for fd in output:
                pending.register(fd, selectors.EVENT_READ)
            while pending.get_map():
                ready = pending.select(deadline - time.monotonic())
                if not ready:
                    raise TimeoutError
                for key, _ in ready:
                    chunk = os.read(key.fd, 1 << 16)
                    output[key.fd] += chunk
                    if not chunk:
                        pending.unregister(key.fd)
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            returncode = int(replies.readline())
            pid = None
        except TimeoutError:
            raise subprocess.TimeoutExpired(command, timeout, output[out_r], output[err_r]) from None
        finally:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for fd in (out_r, err_r, out_w, err_w):
                if fd is not None:
                    os.close(fd)
    # as subprocess's text mode decodes: the locale's encoding, universal newlines
    stdout, stderr = [output[fd].decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")
                      for fd in (out_r, err_r)]
    return subprocess.CompletedProcess(command, returncode, stdout, stderr)


@pytest.fixture
def compose_config():
    """Compose the run config as Hydra does for `python -m cifar_ablate <overrides>`."""
    from hydra import compose, initialize_config_dir

    import cifar_ablate.run  # noqa: F401  (registers the schema and the resolvers, as `python -m cifar_ablate` does)
    from cifar_ablate.config import CONFIG_DIR

    def _compose(overrides=(), return_hydra_config=False):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)

    return _compose
