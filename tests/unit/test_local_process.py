"""LocalProcess.wait: the exit status once the process ends, None while it runs."""

import signal
import subprocess
import sys

from harness.hosts.local import LocalProcess


def _child(code: str) -> LocalProcess:
    return LocalProcess(subprocess.Popen([sys.executable, "-c", code]))


def test_wait_returns_the_exit_status_once_the_process_ends() -> None:
    process = _child("import sys; sys.exit(3)")
    assert process.wait(30) == 3
    assert process.wait(0) == 3  # and again, once reaped


def test_wait_returns_none_while_the_process_runs_and_its_signal_once_killed() -> None:
    process = _child("import time; time.sleep(60)")
    try:
        assert process.wait(0.05) is None
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
