"""IRQL (CR8): KeGetCurrentIrql, KeRaiseIrql, KeLowerIrql, and `at_irql` for calls at a raised level."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from harness.ddi.base import DdiFamily

PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2
HIGH_LEVEL = 15


class IrqlDdis(DdiFamily):
    def KeGetCurrentIrql(self) -> int:
        return self._int(self._call("KeGetCurrentIrql"), "irql")

    def KeRaiseIrql(self, new_irql: int) -> int:
        """Returns the old IRQL (NT writes it through a pointer). Raising below the current level
        bugchecks IRQL_NOT_GREATER_OR_EQUAL (0x9)."""
        return self._int(self._call("KeRaiseIrql", new_irql), "old_irql")

    def KeLowerIrql(self, new_irql: int) -> None:
        self._call("KeLowerIrql", new_irql)

    @contextmanager
    def at_irql(self, irql: int) -> Iterator[None]:
        """Every DDI called inside runs at `irql`; the old level comes back on the way out, unless
        the guest stopped (there is nothing left to lower then)."""
        old = self.KeRaiseIrql(irql)
        yield
        self.KeLowerIrql(old)
