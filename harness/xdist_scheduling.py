"""Parallel runs: a test module's tests on one VM config go to one xdist worker, which keeps that
config's VM booted through them.

The unit of work is (config, module), not the whole config: a config under nested KVM takes several
times longer than one under TCG, and whole configs would leave one worker running it alone at the
end. A worker that moves to another config boots its VM once more, which costs 50 ms under TCG.

xdist's own `--dist loadgroup` marks groups by rewriting `item._nodeid`, which pytest 9 no longer
reads, so its groups silently fall apart. This scheduler needs no marks: it is xdist's load-scope
scheduler with the scope taken from the VM config in the test's parameter id (`test_x[la57-2]` runs
on la57) and the module, or the module alone for tests that use no VM.

A worker that dies under a test (SIGKILL, out of memory) is replaced, and the test runs once more on
the new worker, like any infrastructure failure; a test that takes a second worker down with it is
not run a third time (pytest_plugin.pytest_handlecrashitem reports it as INFRA).
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling
from xdist.workermanage import WorkerController

_PARAMETER_ID = re.compile(r"\[(.*)\]$")


class ConfigScheduling(LoadScopeScheduling):
    def __init__(self, config: pytest.Config, log: Producer | None, config_names: set[str]) -> None:
        super().__init__(config, log)
        self._config_names = config_names
        self._crashes: Counter[str] = Counter()
        self._not_again: set[str] = set()

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        match = _PARAMETER_ID.search(nodeid)
        if match:
            for token in match.group(1).split("-"):
                if token in self._config_names:
                    return f"{token}::{module}"
        return module

    def _running_on(self, node: WorkerController) -> str | None:
        """The test a worker runs: the first of its work not completed."""
        for unit in self.assigned_work.get(node, {}).values():
            for nodeid, completed in unit.items():
                if not completed:
                    return str(nodeid)
        return None

    def _drop_tests_not_to_run_again(self) -> None:
        for scope, unit in list(self.workqueue.items()):
            for nodeid in self._not_again & unit.keys():
                unit[nodeid] = True
            if all(unit.values()):
                del self.workqueue[scope]

    def remove_node(self, node: WorkerController) -> str | None:
        """xdist's, plus: the test a dead worker was running goes back to the queue once only."""
        running = self._running_on(node)
        if running is not None:
            self._crashes[running] += 1
            if self._crashes[running] > 1:
                self._not_again.add(running)
        crashed: str | None = super().remove_node(node)
        self._drop_tests_not_to_run_again()
        return crashed

    def _reschedule(self, node: WorkerController) -> None:
        self._drop_tests_not_to_run_again()  # remove_node re-queues the dead worker's work before this
        super()._reschedule(node)

    def retries_crashed(self, nodeid: str) -> bool:
        """Whether the test that took its worker down will run again (the first time it did)."""
        return self._crashes[nodeid] == 1
