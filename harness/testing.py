"""Assertions for tests that expect the guest to stop: `with expect_stop(0xDA, 0x104, va) as stop:`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from harness.coredump import stop_expected
from harness.errors import BugCheck, BugCheckRecord


@dataclass
class ExpectedStop:
    """Filled in when the block raised the expected BugCheck."""

    records: list[BugCheckRecord] = field(default_factory=list)

    @property
    def record(self) -> BugCheckRecord:
        assert self.records, "the guest did not stop"
        return self.records[0]


@contextmanager
def expect_stop(code: int, *parameters: int | None) -> Iterator[ExpectedStop]:
    """The block must end in KeBugCheckEx(code, P1, ...): each given parameter must match exactly,
    None matches anything, and parameters not given are not checked. An expected stop is not a
    crash: it leaves no core dump."""
    if len(parameters) > 4:
        raise ValueError(f"a bugcheck has 4 parameters, {len(parameters)} given")
    stop = ExpectedStop()
    with pytest.raises(BugCheck) as caught, stop_expected():
        yield stop
    record = caught.value.record
    stop.records.append(record)
    wanted = "".join(f", P{i + 1}=0x{p:x}" for i, p in enumerate(parameters) if p is not None)
    matches = all(p is None or p == actual for p, actual in zip(parameters, record.parameters[: len(parameters)],
                                                                 strict=True))
    assert record.code == code and matches, f"expected STOP 0x{code:X}{wanted}, got {record.stop_line()}"
