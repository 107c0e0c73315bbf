"""The host's spin on a mailbox answer, and the agent's quiet interval it asks for: long on an idle
core, short where workers fill the cores."""

import os

import pytest

from harness.agent.client import (
    SHARED_CORES_AGENT_QUIET_MICROSECONDS,
    SHARED_CORES_SPIN_SECONDS,
    SPIN_SECONDS,
    agent_quiet_microseconds,
    spin_seconds,
)


def test_a_worker_per_core_spins_briefly_and_asks_the_agent_to_halt_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(len(os.sched_getaffinity(0))))
    assert spin_seconds() == SHARED_CORES_SPIN_SECONDS < SPIN_SECONDS
    assert agent_quiet_microseconds() == SHARED_CORES_AGENT_QUIET_MICROSECONDS > 0


def test_fewer_workers_than_cores_spin_long_and_leave_the_agent_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every worker shares it")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(cores - 1))
    assert (spin_seconds(), agent_quiet_microseconds()) == (SPIN_SECONDS, 0)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert (spin_seconds(), agent_quiet_microseconds()) == (SPIN_SECONDS, 0)
