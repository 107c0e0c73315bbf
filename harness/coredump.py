"""ELF cores of a guest that crashed or hung, for `gdb vm_images/build/mmhil-kernel.elf core.elf`.

QEMU writes the core (QMP `dump-guest-memory`, ELF, paging on so that the segments carry the
kernel's virtual addresses and gdb resolves its symbols), into a file the harness opens and hands
over as a descriptor (`getfd`): QEMU never opens a path of the harness's, so this keeps working when
QEMU runs as another user or under `-sandbox on`.

A core is as big as the guest's RAM and takes about as long as writing that much to disk: on this
machine 268 MB and 1.2 s for the 256 MiB `default` config, 6.4 GB and 57 s for the 6 GiB `bigmem`
(mostly free frames: an ELF core keeps them). So:

- a stop the test expects (`harness.testing.expect_stop`) gets no core: it is not a crash;
- a core needs the guest's RAM size plus `FREE_SPACE_MARGIN` free on the target's file system;
- each process writes at most `PROCESS_BUDGET_BYTES` of cores (a regression that crashes every test
  of a 6 GiB config must not fill the disk or take an hour); after that the failure says why it has
  no core.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfrastructureError
from harness.qmp import QmpChannel

CORE_NAME = "core.elf"
FREE_SPACE_MARGIN = 1 << 30
PROCESS_BUDGET_BYTES = 8 << 30
_FD_NAME = "mmhil-core"
_ELF_HEADER_SLACK = 16 << 20  # notes and program headers beyond the RAM itself

_stop_expected: ContextVar[bool] = ContextVar("mmhil_stop_expected", default=False)


@contextlib.contextmanager
def stop_expected() -> Iterator[None]:
    """Inside this block a guest stop is what the test wants (expect_stop): it gets no core."""
    token = _stop_expected.set(True)
    try:
        yield
    finally:
        _stop_expected.reset(token)


def stop_is_expected() -> bool:
    return _stop_expected.get()


@dataclass(frozen=True)
class CoreDump:
    """A core that was written (`path` set), or why there is none (`path` None); `note` says which."""

    path: Path | None
    note: str

    @property
    def taken(self) -> bool:
        return self.path is not None


class CoreBudget:
    """How many bytes of cores this process may still write."""

    def __init__(self, limit: int = PROCESS_BUDGET_BYTES) -> None:
        self.limit = limit
        self.spent = 0
        self._lock = threading.Lock()

    def refusal(self, size: int, directory: Path) -> str | None:
        """Why a core of `size` bytes may not go to `directory`, or None if it may."""
        with self._lock:
            if self.spent + size > self.limit:
                return (f"this process already wrote {self.spent >> 20} MiB of cores, and another "
                        f"{size >> 20} MiB would pass its budget of {self.limit >> 20} MiB")
        try:
            stats = os.statvfs(directory)
        except OSError as exc:
            return f"cannot check the free space of {directory}: {exc.strerror}"
        free = stats.f_bavail * stats.f_frsize
        if free < size + FREE_SPACE_MARGIN:
            return (f"{directory} has {free >> 20} MiB free; a core of this guest needs {size >> 20} MiB "
                    f"plus {FREE_SPACE_MARGIN >> 20} MiB to spare")
        return None

    def spend(self, size: int) -> None:
        with self._lock:
            self.spent += size


PROCESS_BUDGET = CoreBudget()


def dump_seconds(memory_bytes: int) -> float:
    """How long a dump may take before it counts as stuck: generous, disks are slow and shared."""
    return 60.0 + 30.0 * memory_bytes / (1 << 30)


def dump_guest_core(qmp: QmpChannel, path: Path, memory_bytes: int,
                    budget: CoreBudget = PROCESS_BUDGET) -> CoreDump:
    """Write the guest's ELF core to `path` through a descriptor QEMU is given; never raises.

    QEMU stops the guest while it dumps (a paused guest stays paused)."""
    size = memory_bytes + _ELF_HEADER_SLACK
    path.parent.mkdir(parents=True, exist_ok=True)
    refused = budget.refusal(size, path.parent)
    if refused is not None:
        return CoreDump(None, f"no core: {refused}")
    started = time.monotonic()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return CoreDump(None, f"no core: cannot create {path}: {exc.strerror}")
    try:
        qmp.send_fd(_FD_NAME, fd)
        qmp.command("dump-guest-memory", {"paging": True, "protocol": f"fd:{_FD_NAME}"},
                    timeout=dump_seconds(memory_bytes))
    except InfrastructureError as exc:
        path.unlink(missing_ok=True)
        return CoreDump(None, f"no core: QEMU could not write {path}: {exc}")
    finally:
        os.close(fd)  # QEMU closes its own copy when the dump ends
    written = path.stat().st_size
    budget.spend(written)
    return CoreDump(path, f"{written >> 20} MiB in {time.monotonic() - started:.1f} s")


__all__ = [
    "CORE_NAME",
    "PROCESS_BUDGET",
    "CoreBudget",
    "CoreDump",
    "dump_guest_core",
    "dump_seconds",
    "stop_expected",
    "stop_is_expected",
]
