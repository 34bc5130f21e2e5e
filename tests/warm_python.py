"""A Python that has already imported torch, torchvision, torchmetrics, Hydra and SciPy, and forks for
each CLI run a child that runs `python -m <module> args` (or `-c <script>`, or `<file>`) as a fresh interpreter
would: its own cwd, environment, argv, sys.path[0], stdin/stdout/stderr and a new `__main__`, the program run by
runpy's own `-m` code, and the exit as Python's (SystemExit's code, a traceback and 1, an uncaught Ctrl+C's
SIGINT). What it saves is those imports (about 4.5 s of the 6.5 s a run spends importing on a 2-core machine),
and, as the imports are frozen out of the garbage collector's reach (gc.freeze), about 1.4 s of each child's exit.
What it changes is that those libraries came first: none of them sets anything at import that depends on what ran
before (the loggers they make are the same either way, checked). Lightning is not among them: at import it gives
its logger a handler of its own unless the root logger has one, so it must come after Hydra's logging, as in a
fresh run. A test that depends on import order or on being started from argv (the torch-import test, DDP) runs a
fresh interpreter instead (run_cli(fresh=True)).

Protocol (one client, one run at a time): connect to the Unix socket named in argv[1]; send one JSON line
{"program": [...], "args": [...], "cwd": ..., "env": {...}} together with 3 file descriptors (stdin, stdout,
stderr); read "<pid>\\n", then "<exit code>\\n" (negative: the signal that ended it, as subprocess reports).
The server ends when its stdin (a pipe from the test process) closes.
"""
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import types

import hydra  # noqa: F401
import numpy as np
import omegaconf  # noqa: F401
import scipy.stats  # noqa: F401
import torch  # noqa: F401
import torchmetrics  # noqa: F401
import torchvision  # noqa: F401


def serve(path: str):
    """Fork a child per request; return (in the child only) what it must run."""
    gc.freeze()  # as the gc docs advise before forking: the children's collections (and exit) skip what is imported
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            sys.exit(0)  # the test process is gone
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        with conn:
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
                return request, fds
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):  # the client is gone
                conn.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            with contextlib.suppress(OSError):  # the client timed out, killed the child and went on
                conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def become(request: dict, fds: list):
    """Turn this forked child into the process `python <program> <args>` would have started."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    np.random.seed()  # a fresh interpreter seeds NumPy's global generator anew (`random` reseeds itself at fork)
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
        main.__dict__["__file__"] = target
        with open(target) as source:
            code = compile(source.read(), target, "exec")
    return lambda: exec(code, main.__dict__)


if __name__ == "__main__":
    program = become(*serve(sys.argv[1]))
    program()  # uncaught exceptions, SystemExit and Ctrl+C end this child exactly as they end `python ...`
