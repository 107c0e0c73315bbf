"""Parallel runs: a test module's tests on one VM config go to one xdist worker, which keeps that
config's VM booted through them.

The unit of work is (config, module), not the whole config: a config under nested KVM takes several
times longer than one under TCG, and whole configs would leave one worker running it alone at the
end. A worker that moves to another config boots its VM once more, which costs 50 ms under TCG.

xdist's own `--dist loadgroup` marks groups by rewriting `item._nodeid`, which pytest 9 no longer
reads, so its groups silently fall apart. This scheduler needs no marks: it is xdist's load-scope
scheduler with the scope taken from the VM config in the test's parameter id (`test_x[la57-2]` runs
on la57) and the module, or the module alone for tests that use no VM.
"""

from __future__ import annotations

import re

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

_PARAMETER_ID = re.compile(r"\[(.*)\]$")


class ConfigScheduling(LoadScopeScheduling):
    def __init__(self, config: pytest.Config, log: Producer | None, config_names: set[str]) -> None:
        super().__init__(config, log)
        self._config_names = config_names

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        match = _PARAMETER_ID.search(nodeid)
        if match:
            for token in match.group(1).split("-"):
                if token in self._config_names:
                    return f"{token}::{module}"
        return module
