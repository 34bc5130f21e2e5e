"""A Python that has already imported torch, torchvision, torchmetrics, Hydra and SciPy, and forks for
each CLI run a child that runs `python -m <module> args` (or `-c <script>`, or `<file>`) as a fresh interpreter
would: its own cwd, environment, argv, sys.path[0], stdin/stdout/stderr and a new `__main__`, the program run by
runpy's own `-m` code, and the exit as Python's (SystemExit's code, a traceback and 1, an uncaught Ctrl+C's
SIGINT). What it saves is those imports (about 4.5 s of the 6.5 s a run spends importing on a 2-core machine),
and, as the imports are frozen out of the garbage collector's reach (gc.freeze), about 1.4 s of each child's exit.
What it changes is that those libraries came first: none of them sets anything at import that depends on what ran
before (the loggers they make are the same either way, checked), and what they take from the environment is taken
again in the child (TMPDIR, TZ) or set as they set it (TORCHINDUCTOR_CACHE_DIR). Lightning is not among them: at
import it gives its logger a handler of its own unless the root logger has one, so it must come after Hydra's
logging, as in a fresh run. A test that depends on import order or on being started from argv (the torch-import test, DDP) runs a
fresh interpreter instead (run_cli(fresh=True)).

Known differences, none of which a test here depends on: the string hash seed is the server's (fixed at
interpreter start), so runs forked from one server iterate sets of strings in the same order; tracebacks show two
frames of this file; `gc.freeze()` has been called (the run's own `freeze_imports` then has nothing to do).

Protocol: connect to the Unix socket named in argv[1]; send one JSON line {"program": [kind, target], "args":
[...], "cwd": ..., "env": {...}} together with 3 file descriptors (stdin, stdout, stderr); read "<pid>\\n", then
"<exit code>\\n" (negative: the signal that ended it, as subprocess reports). Runs may overlap. The server ends
when its stdin (a pipe from the test process) closes.
"""
import contextlib
import gc
import json
import multiprocessing.process
import os
import select
import signal
import socket
import sys
import tempfile
import time
import types

ENV_BEFORE_IMPORTS = dict(os.environ)
import hydra  # noqa: E402,F401
import numpy as np  # noqa: E402
import omegaconf  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import torch  # noqa: E402
import torchmetrics  # noqa: E402,F401
import torchvision  # noqa: E402,F401

# What the imports put into the environment (torch: TORCHINDUCTOR_CACHE_DIR), as a fresh run's imports would.
SET_BY_IMPORTS = {k: v for k, v in os.environ.items() if ENV_BEFORE_IMPORTS.get(k) != v}


def serve(path: str):
    """Fork a child per request and report its end; return (in the child only) what it must run."""
    gc.freeze()  # as the gc docs advise before forking: the children's collections (and exit) skip what is imported
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    print("ready", flush=True)
    running = {}  # pid -> the connection waiting for its exit code
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.02 if running else None)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            sys.exit(0)  # the test process is gone
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            with running.pop(pid) as conn, contextlib.suppress(OSError):  # OSError: the client is gone
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        message, fds = b"", []
        while not message.endswith(b"\n"):
            chunk, new_fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            if not chunk:
                break
            message, fds = message + chunk, fds + new_fds
        request = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.close()
            for other in running.values():
                other.close()
            return request, fds
        for fd in fds:
            os.close(fd)
        running[pid] = conn
        with contextlib.suppress(OSError):
            conn.sendall(f"{pid}\n".encode())


def become(request: dict, fds: list):
    """Turn this forked child into the process `python <program> <args>` would have started."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    multiprocessing.process.ORIGINAL_DIR = os.getcwd()  # where spawned processes find a relative script
    os.environ.clear()
    os.environ.update({**SET_BY_IMPORTS, **request["env"]})
    tempfile.tempdir = None  # read from TMPDIR again, as it was at import
    time.tzset()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A fresh interpreter seeds these anew (`random` reseeds itself at fork).
    np.random.seed()
    torch.seed()
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    kind, target = request["program"]
    if kind == "-m":
        import runpy
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = os.getcwd()
        return lambda: runpy._run_module_as_main(target, alter_argv=True)  # what `python -m` itself calls
    if kind == "-c":
        sys.argv = ["-c", *request["args"]]
        sys.path[0] = ""
        code = compile(target, "<string>", "exec")
    else:
        sys.argv = [target, *request["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        main.__dict__["__file__"] = os.path.abspath(target)
        with open(target) as source:
            code = compile(source.read(), os.path.abspath(target), "exec")
    return lambda: exec(code, main.__dict__)


if __name__ == "__main__":
    program = become(*serve(sys.argv[1]))
    program()  # uncaught exceptions, SystemExit and Ctrl+C end this child exactly as they end `python ...`
