"""Throughput of the host walker (no CLI here: callers wire it up)."""

from __future__ import annotations

import time

import numpy.typing as npt

from harness.oracle.memory import PhysicalMemory
from harness.oracle.paging import PagingMode
from harness.oracle.walker import as_va_array, translate_many, walk


def measure_translations(
    memory: PhysicalMemory,
    cr3: int,
    mode: PagingMode,
    vas: npt.ArrayLike,
    seconds: float = 1.0,
) -> float:
    """Translations per second of :func:`translate_many` over ``vas``, repeated for about ``seconds``."""
    arr = as_va_array(vas)
    done = 0
    start = time.perf_counter()
    while True:
        translate_many(memory, cr3, arr, mode)
        done += arr.size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def measure_walks(
    memory: PhysicalMemory,
    cr3: int,
    mode: PagingMode,
    vas: npt.ArrayLike,
    seconds: float = 1.0,
) -> float:
    """Walks per second of the scalar :func:`walk` over ``vas`` (cycled) for about ``seconds``."""
    values = [int(v) for v in as_va_array(vas).tolist()]
    if not values:
        raise ValueError("no VAs to walk")
    done = 0
    start = time.perf_counter()
    while True:
        for v in values[:10000]:
            walk(memory, cr3, v, mode)
        done += min(len(values), 10000)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed
        values = values[10000:] + values[:10000]
