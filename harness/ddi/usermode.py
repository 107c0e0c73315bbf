"""User mode (docs/ddi/usermode.md): user test pages, the ring-3 probe, kernel accesses to user pages."""

from __future__ import annotations

from dataclasses import dataclass

from harness.ddi.base import DdiFamily

USER_PROBE_READ = 0
USER_PROBE_WRITE = 1
USER_PROBE_CODE_VA = 0x1000_0000
USER_VIEW_BASE = 0x1020_0000


@dataclass(frozen=True)
class UserPage:
    va: int
    pfn: int


@dataclass(frozen=True)
class ProbeResult:
    """What the ring-3 probe did: a completed access (and the qword read), or the fault ring 3 took."""

    completed: bool
    value: int
    vector: int
    error: int
    address: int
    rip: int


class UserModeDdis(DdiFamily):
    def user_page_allocate(self) -> UserPage:
        values = self._call("user_page_allocate")
        return UserPage(self._int(values, "va"), self._int(values, "pfn"))

    def user_page_free(self, va: int) -> None:
        self._call("user_page_free", va)

    def user_probe(self, va: int, op: int, value: int = 0) -> ProbeResult:
        v = self._call("user_probe", va, op, value)
        return ProbeResult(self._bool(v, "completed"), self._int(v, "value"), self._int(v, "vector"),
                           self._int(v, "error"), self._int(v, "address"), self._int(v, "rip"))

    def user_probe_read(self, va: int) -> ProbeResult:
        return self.user_probe(va, USER_PROBE_READ)

    def user_probe_write(self, va: int, value: int) -> ProbeResult:
        return self.user_probe(va, USER_PROBE_WRITE, value)

    def user_kernel_access(self, va: int, write: bool, value: int = 0, stac: bool = False) -> int:
        """The kernel itself reads (returns the qword) or writes 8 bytes at va; with stac, inside STAC/CLAC."""
        return self._int(self._call("user_kernel_access", va, int(write), value, int(stac)), "value")

    def user_kernel_execute(self, va: int) -> None:
        self._call("user_kernel_execute", va)
