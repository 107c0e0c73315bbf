"""The host's spin on a mailbox answer: long on an idle core, short where workers fill the cores."""

import os

import pytest

from harness.agent.client import SHARED_CORES_SPIN_SECONDS, SPIN_SECONDS, spin_seconds


def test_a_worker_per_core_spins_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(len(os.sched_getaffinity(0))))
    assert spin_seconds() == SHARED_CORES_SPIN_SECONDS < SPIN_SECONDS


def test_fewer_workers_than_cores_spin_long(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every worker shares it")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(cores - 1))
    assert spin_seconds() == SPIN_SECONDS
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert spin_seconds() == SPIN_SECONDS
