"""The forked runs of tests/warm_python.py behave as fresh interpreters do: the other tests rely on it."""
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import run_cli

SHOW = """
import os, sys
print(__name__, sys.argv, repr(sys.path[0]), os.getcwd(), os.environ.get("CHECK"), sys.stdin.read() == "")
"""


@pytest.mark.parametrize("script, last_line, returncode", [
    (SHOW, None, 0),
    ("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)", "err", 3),
    ("raise ValueError('bad value')", "ValueError: bad value", 1),
    ("raise KeyboardInterrupt", "KeyboardInterrupt", -2),  # Python ends an uncaught Ctrl+C by SIGINT
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", None, -15),
    # reseeded per process
    ("import sys, numpy, torch; print(numpy.random.randint(2**31), torch.initial_seed(), file=sys.stderr)", None, 0),
    # output is read until every process holding it has closed it, as from a pipe
    ("import subprocess; subprocess.Popen(['sh', '-c', 'sleep 1; echo late']); print('early')", None, 0),
])
def test_a_forked_run_sees_and_ends_as_a_fresh_interpreter(tmp_path, script, last_line, returncode):
    fresh = run_cli("a", "b", cwd=tmp_path, script=script, env={"CHECK": "yes"}, fresh=True)
    forked = [run_cli("a", "b", cwd=tmp_path, script=script, env={"CHECK": "yes"}) for _ in range(2)]
    for run in forked:
        assert (run.returncode, run.stdout) == (fresh.returncode, fresh.stdout) == (returncode, fresh.stdout)
        stderr_last = [(r.stderr.splitlines() or [None])[-1] for r in (fresh, run)]
        if last_line is not None:
            assert stderr_last == [last_line, last_line]
    if "randint" in script:  # NumPy's and torch's draws both differ
        numpy_draws, torch_seeds = zip(*(run.stderr.split() for run in forked))
        assert len(set(numpy_draws)) == len(set(torch_seeds)) == 2


def test_a_forked_module_run_has_the_modules_argv_and_main(tmp_path):
    (tmp_path / "probe.py").write_text("import sys\nprint(__name__, sys.argv[0].endswith('probe.py'), sys.argv[1:])\n")
    fresh, forked = (run_cli("x", cwd=tmp_path, module="probe", fresh=f) for f in (True, False))
    assert forked.stdout == fresh.stdout == "__main__ True ['x']\n"


SPAWNS = """
import multiprocessing, os, sys
def square(x):
    return x * x
if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print(os.path.isabs(__file__), pool.map(square, [2]))
"""


def test_a_forked_script_given_by_a_relative_path_can_spawn_processes(tmp_path):
    (tmp_path / "spawns.py").write_text(SPAWNS)
    fresh, forked = (run_cli(cwd=tmp_path, file=Path("spawns.py"), timeout=60, fresh=f) for f in (True, False))
    assert forked.stdout == fresh.stdout == "True [4]\n", forked.stderr


def test_forked_runs_started_together_run_at_once(tmp_path):
    waits = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.05)\nprint('went')"
    with ThreadPoolExecutor(2) as pool:
        waiting = pool.submit(run_cli, cwd=tmp_path, script=waits, timeout=60)
        time.sleep(0.5)
        pool.submit(run_cli, cwd=tmp_path, script="open('go', 'w').close()").result()
        assert waiting.result().stdout == "went\n"


def test_a_forked_run_past_its_timeout_is_killed(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli(cwd=tmp_path, script="import time; time.sleep(60)", timeout=2)
    assert run_cli(cwd=tmp_path, script="print('next')").stdout == "next\n"  # the server goes on
