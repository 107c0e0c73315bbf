"""Guest physical memory, read from the host without trusting the guest.

Backends:

- :class:`SharedRamMemory` mmaps the ``memory-backend-file,share=on`` file (read and write, zero-copy
  numpy views for the batch walker).
- :class:`MonitorMemory` reads through QMP ``pmemsave`` (bulk) or HMP ``xp`` (small reads). Read-only.
- :class:`RemoteRamMemory` reads and writes the RAM backend file on a remote QEMU host (SFTP).
- :class:`BufferMemory` holds guest RAM in a host bytearray (unit tests, synthetic tables, benchmarks).
- :class:`PageCache` keeps whole 4 KiB pages read through another backend, for one window in which
  the guest is stopped: a walk over the monitor then costs one round trip per page table, not per entry.

All of them map guest-physical addresses through a :class:`RamLayout`, which reproduces how QEMU 7.2
splits the RAM backend below and above 4 GiB.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import mmap
import os
import re
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from harness.oracle.paging import format_size

GiB = 1 << 30
MiB = 1 << 20
FOUR_GIB = 4 * GiB
_U64 = struct.Struct("<Q")
U64Array = npt.NDArray[np.uint64]
U8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]


class MemoryAccessError(Exception):
    """A guest-physical access that cannot be served (outside RAM, read-only backend, monitor error)."""


# --------------------------------------------------------------------------------------------------
# RAM layout


@dataclass(frozen=True)
class RamRegion:
    """``size`` bytes of guest RAM at guest-physical ``gpa_start``, at ``file_offset`` in the backend."""

    gpa_start: int
    size: int
    file_offset: int

    @property
    def gpa_end(self) -> int:
        """One past the last guest-physical address."""
        return self.gpa_start + self.size

    def __str__(self) -> str:
        span = f"[{self.gpa_start:#x}, {self.gpa_end:#x}) ({format_size(self.size)})"
        return f"{span} at file offset {self.file_offset:#x}"


class RamLayout:
    """How guest-physical addresses map to offsets in the RAM backend file.

    Regions must be 4 KiB aligned (gpa, size and file offset) and must not overlap, either in
    guest-physical space or in the file.
    """

    def __init__(self, regions: Iterable[RamRegion | tuple[int, int, int]]) -> None:
        regs = sorted(
            (r if isinstance(r, RamRegion) else RamRegion(*r) for r in regions), key=lambda r: r.gpa_start
        )
        if not regs:
            raise ValueError("a RAM layout needs at least one region")
        for r in regs:
            if r.size <= 0 or r.gpa_start < 0 or r.file_offset < 0:
                raise ValueError(f"bad RAM region {r}")
            if (r.gpa_start | r.size | r.file_offset) & 0xFFF:
                raise ValueError(f"RAM region {r} is not 4 KiB aligned")
        for a, b in itertools.pairwise(regs):
            if a.gpa_end > b.gpa_start:
                raise ValueError(f"RAM regions overlap in guest-physical space: {a} and {b}")
        by_file = sorted(regs, key=lambda r: r.file_offset)
        for a, b in itertools.pairwise(by_file):
            if a.file_offset + a.size > b.file_offset:
                raise ValueError(f"RAM regions overlap in the backend file: {a} and {b}")
        self.regions: tuple[RamRegion, ...] = tuple(regs)
        self._starts = [r.gpa_start for r in regs]
        self._np_starts = np.array(self._starts, dtype=np.uint64)
        self._np_ends = np.array([r.gpa_end for r in regs], dtype=np.uint64)
        self._np_delta = np.array([r.file_offset - r.gpa_start for r in regs], dtype=np.int64)

    # -- constructors ------------------------------------------------------------------------------

    @classmethod
    def identity(cls, size: int) -> RamLayout:
        """One region: guest-physical [0, size) at file offset 0."""
        return cls([RamRegion(0, size, 0)])

    @classmethod
    def for_machine(
        cls,
        machine: str,
        ram_bytes: int,
        max_ram_below_4g: int | None = None,
        *,
        above_4g_base: int = FOUR_GIB,
    ) -> RamLayout:
        """The layout QEMU 7.2 gives ``-M machine -m ram_bytes`` with the RAM in one backend file.

        ``machine`` is ``pc``/``q35``/``microvm``/``isapc`` or a versioned name (``pc-i440fx-7.2``,
        ``pc-q35-7.2``, ``pc-1.7``). The low part sits at gpa 0, file offset 0; the rest at
        ``above_4g_base`` (4 GiB), file offset = size of the low part. Read in QEMU's source:

        - ``pc`` (hw/i386/pc_piix.c ``pc_init1``): ``lowmem = max-ram-below-4g`` (default 3.5 GiB); if
          RAM >= that and the machine type is gigabyte-aligned (every type after pc-1.7), lowmem is
          capped at 3 GiB. RAM >= lowmem is split, else it is all low.
        - ``q35`` (hw/i386/pc_q35.c ``pc_q35_init``): lowmem = 2 GiB if RAM >= 2816 MiB (0xb0000000)
          else 2816 MiB, then ``min(lowmem, max-ram-below-4g)`` (default 4 GiB). RAM >= lowmem is split.
        - ``microvm`` (hw/i386/microvm.c ``microvm_memory_init``): lowmem fixed at 3 GiB; RAM above
          that is split. microvm has no max-ram-below-4g property.

        ``above_4g_base``: QEMU >= 7.1 moves the high part to 1 TiB for AMD vCPUs when the highest
        used guest address would reach the HyperTransport hole at 0xFD00000000 (pc.c
        ``pc_memory_init``); only guests with about 1 TiB of RAM meet that. Pass 1 << 40 then.
        """
        if ram_bytes <= 0:
            raise ValueError(f"RAM size must be positive, not {ram_bytes}")
        name = machine.split(",", 1)[0].strip().lower()
        if max_ram_below_4g is not None and not 0 <= max_ram_below_4g <= FOUR_GIB:
            raise ValueError(f"max-ram-below-4g={max_ram_below_4g:#x} exceeds 4 GiB (QEMU refuses it)")
        if name == "microvm":
            if max_ram_below_4g is not None:
                raise ValueError("microvm has no max-ram-below-4g property (its split is fixed at 3 GiB)")
            lowmem = 3 * GiB
            below = min(ram_bytes, lowmem)
        elif name == "q35" or name.startswith("pc-q35-"):
            lowmem = 2 * GiB if ram_bytes >= 0xB0000000 else 0xB0000000
            limit = max_ram_below_4g or FOUR_GIB  # 0 means "unset" in QEMU too
            lowmem = min(lowmem, limit)
            below = lowmem if ram_bytes >= lowmem else ram_bytes
        elif name in ("pc", "isapc") or name.startswith("pc-"):
            limit = max_ram_below_4g or 0xE0000000
            lowmem = limit
            if ram_bytes >= limit and _pc_gigabyte_align(name):
                lowmem = min(lowmem, 3 * GiB)
            below = lowmem if ram_bytes >= lowmem else ram_bytes
        else:
            raise ValueError(
                f"unknown machine type {machine!r} (known: pc, q35, microvm, isapc, pc-*, pc-q35-*)"
            )
        regions = [RamRegion(0, below, 0)] if below else []
        if ram_bytes > below:
            regions.append(RamRegion(above_4g_base, ram_bytes - below, below))
        return cls(regions)

    # -- queries -----------------------------------------------------------------------------------

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.regions)

    @property
    def file_size(self) -> int:
        """The smallest backend file that holds every region."""
        return max(r.file_offset + r.size for r in self.regions)

    def describe(self) -> str:
        return ", ".join(str(r) for r in self.regions)

    def region_of(self, pa: int) -> RamRegion | None:
        i = bisect.bisect_right(self._starts, pa) - 1
        if i >= 0:
            r = self.regions[i]
            if pa < r.gpa_end:
                return r
        return None

    def contains(self, pa: int, size: int = 1) -> bool:
        try:
            self.spans(pa, size)
        except MemoryAccessError:
            return False
        return True

    def file_offset(self, pa: int, size: int = 1) -> int:
        """File offset of ``pa``; [pa, pa+size) must lie inside one region."""
        r = self.region_of(pa)
        if r is None or pa + size > r.gpa_end or size < 0:
            raise self._outside(pa, size)
        return r.file_offset + (pa - r.gpa_start)

    def spans(self, pa: int, size: int) -> list[tuple[int, int]]:
        """[(file_offset, length), ...] covering [pa, pa+size); regions that touch are crossed."""
        if size < 0 or pa < 0:
            raise self._outside(pa, size)
        out: list[tuple[int, int]] = []
        cur, end = pa, pa + size
        while cur < end:
            r = self.region_of(cur)
            if r is None:
                raise self._outside(pa, size)
            n = min(end, r.gpa_end) - cur
            out.append((r.file_offset + (cur - r.gpa_start), n))
            cur += n
        return out

    def file_offsets(self, pas: U64Array) -> tuple[U64Array, BoolArray]:
        """Vectorised ``file_offset(pa, 8)``: (offsets, inside). Offsets are 0 where ``inside`` is False."""
        if len(self.regions) == 1:
            r = self.regions[0]
            if r.gpa_start == 0 and r.file_offset == 0:
                inside = pas <= np.uint64(r.size - 8)
                return np.where(inside, pas, np.uint64(0)), inside
        idx = np.searchsorted(self._np_starts, pas, side="right").astype(np.intp) - 1
        ok = idx >= 0
        idx = np.where(ok, idx, 0)
        inside = ok & (pas + np.uint64(8) <= self._np_ends[idx])
        offs = (pas.astype(np.int64) + self._np_delta[idx]).astype(np.uint64)
        return np.where(inside, offs, np.uint64(0)), inside

    def _outside(self, pa: int, size: int) -> MemoryAccessError:
        return MemoryAccessError(
            f"guest-physical [{pa:#x}, {pa + size:#x}) ({size} bytes) is not inside guest RAM; "
            f"RAM is {self.describe()}"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RamLayout) and self.regions == other.regions

    def __hash__(self) -> int:
        return hash(self.regions)

    def __repr__(self) -> str:
        return f"RamLayout({list(self.regions)!r})"


def _pc_gigabyte_align(name: str) -> bool:
    """pc-i440fx machine types up to 1.7 (and their pc-1.x aliases) keep the 3.5 GiB split."""
    m = re.fullmatch(r"pc-(?:i440fx-)?(\d+)\.(\d+)", name)
    if m is None:
        return True
    return (int(m.group(1)), int(m.group(2))) > (1, 7)


# --------------------------------------------------------------------------------------------------
# The interface


@runtime_checkable
class PhysicalMemory(Protocol):
    """Guest physical memory as the host sees it."""

    def read(self, pa: int, size: int) -> bytes:
        """``size`` bytes at guest-physical ``pa``; MemoryAccessError outside RAM."""
        ...

    def read_u64(self, pa: int) -> int:
        """The little-endian 64-bit value at ``pa``."""
        ...

    def write(self, pa: int, data: bytes) -> None:
        """Write ``data`` at ``pa``; backends that cannot write raise MemoryAccessError."""
        ...


@runtime_checkable
class ArrayBackedMemory(PhysicalMemory, Protocol):
    """A backend whose whole RAM file is addressable as numpy arrays (the batch walker uses this)."""

    @property
    def layout(self) -> RamLayout: ...

    def u64_array(self) -> U64Array:
        """The backend file as little-endian uint64 (element i = file bytes [8i, 8i+8)), zero-copy."""
        ...


class _ArrayMemoryBase:
    """read/write/read_u64 over a buffer in file-offset space, mapped through a RamLayout."""

    _buf: Any  # bytearray or mmap
    _layout: RamLayout
    _writable: bool

    def _init_views(self) -> None:
        n = len(self._buf)
        self._u8: U8Array = np.frombuffer(self._buf, dtype=np.uint8, count=n)
        self._u64: U64Array = np.frombuffer(self._buf, dtype="<u8", count=n // 8)
        r0 = self._layout.regions[0]
        # Fast path for the common single identity region.
        self._identity_size = (
            r0.size if len(self._layout.regions) == 1 and r0.file_offset == r0.gpa_start == 0 else 0
        )

    @property
    def layout(self) -> RamLayout:
        return self._layout

    @property
    def writable(self) -> bool:
        return self._writable

    def u64_array(self) -> U64Array:
        return self._u64

    @property
    def array(self) -> U8Array:
        """The whole backend as uint8 (file-offset space), zero-copy."""
        return self._u8

    def view(self, pa: int, size: int) -> memoryview:
        """A zero-copy memoryview of [pa, pa+size), which must lie in one region."""
        off = self._layout.file_offset(pa, size)
        return memoryview(self._buf)[off : off + size]

    def read(self, pa: int, size: int) -> bytes:
        if pa >= 0 and pa + size <= self._identity_size and size >= 0:
            return bytes(self._buf[pa : pa + size])
        return b"".join(bytes(self._buf[off : off + n]) for off, n in self._layout.spans(pa, size))

    def read_u64(self, pa: int) -> int:
        if 0 <= pa <= self._identity_size - 8:
            return int(_U64.unpack_from(self._buf, pa)[0])
        off = self._layout.file_offset(pa, 8)
        return int(_U64.unpack_from(self._buf, off)[0])

    def write(self, pa: int, data: bytes) -> None:
        if not self._writable:
            raise MemoryAccessError(f"{type(self).__name__} was opened read-only; cannot write at {pa:#x}")
        pos = 0
        for off, n in self._layout.spans(pa, len(data)):
            self._buf[off : off + n] = data[pos : pos + n]
            pos += n

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))


# --------------------------------------------------------------------------------------------------
# In-memory backend


class BufferMemory(_ArrayMemoryBase):
    """Guest RAM held in a host bytearray: for unit tests, synthetic page tables and benchmarks."""

    def __init__(self, layout: RamLayout | int, data: bytes | bytearray | None = None) -> None:
        self._layout = RamLayout.identity(layout) if isinstance(layout, int) else layout
        size = self._layout.file_size
        if data is None:
            self._buf = bytearray(size)
        else:
            if len(data) < size:
                raise ValueError(f"buffer of {len(data)} bytes is smaller than the layout ({size} bytes)")
            self._buf = data if isinstance(data, bytearray) else bytearray(data)
        self._writable = True
        self._init_views()

    @property
    def buffer(self) -> bytearray:
        return self._buf  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# Shared-memory backend


class SharedRamMemory(_ArrayMemoryBase):
    """The guest's RAM backend file (``memory-backend-file,share=on``), mmapped.

    ``source`` is a path, or an open file descriptor (mmap takes its own reference: the caller keeps
    and closes its descriptor). The harness hands over the descriptor of a file that was unlinked before
    QEMU started (harness/machine.py), so no name in /dev/shm is needed.

    Reads see the guest's stores as they happen (stop the VM around multi-step reads). ``close()``
    unmaps; it fails with MemoryAccessError while numpy arrays or memoryviews handed out by
    :meth:`u64_array`, :attr:`array` or :meth:`view` are still alive. The mapping outlives QEMU: after
    the guest died the host can still read the RAM as it was left.
    """

    def __init__(
        self, source: str | os.PathLike[str] | int, layout: RamLayout, *, writable: bool = True
    ) -> None:
        self.path = Path(f"/proc/self/fd/{source}") if isinstance(source, int) else Path(source)
        self._layout = layout
        self._writable = writable
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        fd = source if isinstance(source, int) else os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            file_size = os.fstat(fd).st_size
            if file_size < layout.file_size:
                raise MemoryAccessError(
                    f"{self.path} holds {file_size:#x} bytes but the RAM layout needs {layout.file_size:#x} "
                    f"({layout.describe()})"
                )
            self._mmap = mmap.mmap(fd, layout.file_size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            if not isinstance(source, int):
                os.close(fd)
        self._buf = self._mmap
        self._closed = False
        self._init_views()

    def close(self) -> None:
        if self._closed:
            return
        del self._u8, self._u64
        self._buf = b""
        try:
            self._mmap.close()
        except BufferError as exc:
            self._buf = self._mmap
            self._init_views()
            raise MemoryAccessError(
                f"cannot unmap {self.path}: numpy arrays or memoryviews of it are still alive"
            ) from exc
        self._closed = True
        self._identity_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryAccessError(f"{self.path} is closed")

    def read(self, pa: int, size: int) -> bytes:
        self._check_open()
        return super().read(pa, size)

    def read_u64(self, pa: int) -> int:
        if self._closed:
            self._check_open()
        return super().read_u64(pa)

    def write(self, pa: int, data: bytes) -> None:
        self._check_open()
        super().write(pa, data)

    def u64_array(self) -> U64Array:
        self._check_open()
        return self._u64

    def __enter__(self) -> SharedRamMemory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Remote RAM file backend


@runtime_checkable
class BatchReadable(Protocol):
    """A backend that serves many reads in one round trip (PageCache uses it to fetch a level at once)."""

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes | MemoryAccessError]: ...


class RamFileReader(Protocol):
    """Random access to a RAM backend file that this process cannot map (on another machine)."""

    def read_at(self, offset: int, size: int) -> bytes: ...

    def read_many_at(self, spans: list[tuple[int, int]]) -> list[bytes]: ...

    def write_at(self, offset: int, data: bytes) -> None: ...


class RemoteRamMemory:
    """Guest RAM in its backend file on QEMU's host, read and written there (SFTP: ``harness.hosts.ssh``).

    Every read is a round trip: use it behind a :class:`PageCache` made for each stopped window,
    which also keeps it right (the cache dies with the window, so nothing stale is ever read).
    ``read_many`` sends all of a batch's reads before waiting for the first answer. Writes go
    straight to the file (stop the guest around them, as for shared RAM).
    """

    def __init__(self, reader: RamFileReader, layout: RamLayout) -> None:
        self.reader = reader
        self.layout = layout

    def read(self, pa: int, size: int) -> bytes:
        if size < 0 or pa < 0:
            raise MemoryAccessError(f"bad physical read [{pa:#x}, +{size:#x})")
        spans = self.layout.spans(pa, size)
        try:
            data = b"".join(self.reader.read_many_at(spans)) if len(spans) > 1 else self.reader.read_at(*spans[0])
        except OSError as exc:
            raise MemoryAccessError(f"reading guest RAM [{pa:#x}, +{size:#x}) from its host failed: {exc}") from exc
        if len(data) != size:
            raise MemoryAccessError(f"the RAM file gave {len(data)} of {size} bytes at {pa:#x}")
        return data

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes | MemoryAccessError]:
        results: list[bytes | MemoryAccessError] = []
        flat: list[tuple[int, int]] = []
        shapes: list[int | MemoryAccessError] = []  # how many spans each range became
        for pa, size in ranges:
            try:
                spans = self.layout.spans(pa, size)
            except MemoryAccessError as exc:
                shapes.append(exc)
                continue
            flat += spans
            shapes.append(len(spans))
        try:
            pieces = iter(self.reader.read_many_at(flat))
        except OSError as exc:
            raise MemoryAccessError(f"reading guest RAM from its host failed: {exc}") from exc
        for shape in shapes:
            results.append(shape if isinstance(shape, MemoryAccessError)
                           else b"".join(next(pieces) for _ in range(shape)))
        return results

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write(self, pa: int, data: bytes) -> None:
        pos = 0
        try:
            for offset, n in self.layout.spans(pa, len(data)):
                self.reader.write_at(offset, data[pos : pos + n])
                pos += n
        except OSError as exc:
            raise MemoryAccessError(f"writing guest RAM at {pa:#x} on its host failed: {exc}") from exc

    def write_u64(self, pa: int, value: int) -> None:
        self.write(pa, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))


# --------------------------------------------------------------------------------------------------
# Page cache


PAGE = 4096
_PAGE_WORDS = PAGE // 8


class PageCache:
    """Whole 4 KiB pages of another backend, each read once: for a window in which the guest is stopped.

    A page-table walk over the monitor would cost one monitor round trip per entry; through a cache it
    costs one per distinct table page, and the batch walker fetches the pages a level needs in runs of
    consecutive frames (one ``pmemsave`` per run). Unreadable pages are remembered too. The cache is only
    right while guest memory cannot change: make a new one for each stopped window. Read-only.
    """

    def __init__(self, memory: PhysicalMemory, *, max_run_pages: int = 64) -> None:
        self.memory = memory
        self.max_run_pages = max_run_pages
        self._pages: dict[int, U64Array | MemoryAccessError] = {}
        self.fetches = 0  # reads sent to the inner backend

    @property
    def pages_cached(self) -> int:
        return len(self._pages)

    def _store(self, pfn: int, data: bytes) -> None:
        self._pages[pfn] = np.frombuffer(data, dtype="<u8", count=_PAGE_WORDS)

    def prefetch(self, pfns: Iterable[int]) -> None:
        """Fetch the pages not yet cached, one inner read per run of consecutive frames."""
        todo = sorted({p for p in pfns if p not in self._pages and p >= 0})
        runs: list[tuple[int, int]] = []  # [i, j) index ranges of todo that are consecutive frames
        i = 0
        while i < len(todo):
            j = i + 1
            while j < len(todo) and todo[j] == todo[j - 1] + 1 and j - i < self.max_run_pages:
                j += 1
            runs.append((i, j))
            i = j
        if isinstance(self.memory, BatchReadable) and len(runs) > 1:
            # One pipelined request for every run (a remote RAM file): one round trip, not one per run.
            self.fetches += 1
            results = self.memory.read_many([(todo[i] * PAGE, (j - i) * PAGE) for i, j in runs])
            for (i, j), result in zip(runs, results, strict=True):
                self._take_run(todo[i:j], result)
            return
        for i, j in runs:
            self.fetches += 1
            try:
                self._take_run(todo[i:j], self.memory.read(todo[i] * PAGE, (j - i) * PAGE))
            except MemoryAccessError as exc:
                self._take_run(todo[i:j], exc)

    def _take_run(self, pfns: list[int], data: bytes | MemoryAccessError) -> None:
        """Store a run of consecutive frames read at once, or find out page by page which failed."""
        if not isinstance(data, MemoryAccessError):
            for k, pfn in enumerate(pfns):
                self._store(pfn, data[k * PAGE : (k + 1) * PAGE])
        elif len(pfns) == 1:
            self._pages[pfns[0]] = MemoryAccessError(f"guest-physical page {pfns[0] * PAGE:#x} is unreadable")
        else:  # part of the run may be readable
            for pfn in pfns:
                with contextlib.suppress(MemoryAccessError):  # remembered by page()
                    self.page(pfn)

    def page(self, pfn: int) -> U64Array:
        """The page at frame ``pfn`` as 512 little-endian uint64 (MemoryAccessError if unreadable)."""
        cached = self._pages.get(pfn)
        if cached is None:
            self.fetches += 1
            try:
                self._store(pfn, self.memory.read(pfn * PAGE, PAGE))
            except MemoryAccessError as exc:
                self._pages[pfn] = exc
            cached = self._pages[pfn]
        if isinstance(cached, MemoryAccessError):
            raise MemoryAccessError(str(cached))
        return cached

    def read(self, pa: int, size: int) -> bytes:
        if pa < 0 or size < 0:
            raise MemoryAccessError(f"bad physical read [{pa:#x}, +{size:#x})")
        if size == 0:
            return b""
        first, last = pa // PAGE, (pa + size - 1) // PAGE
        self.prefetch(range(first, last + 1))
        data = b"".join(self.page(p).tobytes() for p in range(first, last + 1))
        start = pa - first * PAGE
        return data[start : start + size]

    def read_u64(self, pa: int) -> int:
        if pa & 7 or pa < 0:
            return int.from_bytes(self.read(pa, 8), "little")
        return int(self.page(pa // PAGE)[(pa % PAGE) // 8])

    def write(self, pa: int, data: bytes) -> None:
        raise MemoryAccessError(f"PageCache is read-only (refused a {len(data)}-byte write at {pa:#x})")


# --------------------------------------------------------------------------------------------------
# Monitor backend


class Monitor(Protocol):
    """What MonitorMemory needs from the host's QMP client."""

    @property
    def scratch_dir(self) -> Path: ...

    def hmp(self, command_line: str) -> str: ...

    def command(self, name: str, **arguments: object) -> object: ...


_XP_LINE = re.compile(r"^\s*([0-9a-fA-F]+):((?:\s+0x[0-9a-fA-F]+)+)\s*$")


class ScratchFiles(Protocol):
    """The directory QEMU writes pmemsave files into, on QEMU's host (harness.hosts.base)."""

    @property
    def directory(self) -> PurePosixPath: ...

    def take(self, name: str) -> bytes:
        """The file's bytes; the file is removed. OSError if there is none."""
        ...


class DirectoryScratch:
    """A directory on this machine."""

    def __init__(self, directory: Path) -> None:
        self.directory = PurePosixPath(directory)

    def take(self, name: str) -> bytes:
        path = Path(self.directory) / name
        try:
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)


class MonitorMemory:
    """Guest physical memory through the QEMU monitor. Read-only.

    Reads of at most ``xp_threshold`` bytes (default 512, after widening to 8-byte alignment) use HMP
    ``xp /Nxg`` (one round trip, the answer parsed from text); larger reads use QMP ``pmemsave`` into
    a fresh file in ``monitor.scratch_dir``, which is read and deleted. Both cost one monitor round
    trip; the threshold keeps HMP answers under ~2 KB of text and is not tuned by measurement.

    ``pmemsave`` writes its file on the host QEMU runs on. When that is not this host, pass a
    ``scratch`` that fetches the file from there (``harness.hosts``: SFTP), or ``pmemsave=False``:
    every read then goes through ``xp``, ``xp_chunk`` bytes per command, so this backend works
    wherever QMP reaches.

    With a ``layout``, reads outside guest RAM are refused before anything is sent (QEMU itself
    returns whatever unassigned memory reads as). Stop the VM around multi-step reads.
    """

    def __init__(self, monitor: Monitor, layout: RamLayout | None = None, *, xp_threshold: int = 512,
                 pmemsave: bool = True, xp_chunk: int = 4096, scratch: ScratchFiles | None = None) -> None:
        if xp_chunk <= 0 or xp_chunk % 8:
            raise ValueError(f"xp_chunk must be a positive multiple of 8, not {xp_chunk}")
        self.monitor = monitor
        self.scratch = scratch
        self.layout = layout
        self.xp_threshold = xp_threshold
        self.pmemsave = pmemsave
        self.xp_chunk = xp_chunk

    def read(self, pa: int, size: int) -> bytes:
        if size < 0 or pa < 0 or pa + size > 1 << 63:
            raise MemoryAccessError(f"bad physical read [{pa:#x}, +{size:#x})")
        if size == 0:
            return b""
        if self.layout is not None:
            self.layout.spans(pa, size)  # raises MemoryAccessError naming the RAM ranges
        start, end = pa & ~7, (pa + size + 7) & ~7
        if end - start <= self.xp_threshold or not self.pmemsave:
            data = b"".join(self._read_xp(at, (min(end, at + self.xp_chunk) - at) // 8)
                            for at in range(start, end, self.xp_chunk))
            return data[pa - start : pa - start + size]
        return self._read_pmemsave(pa, size)

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def write(self, pa: int, data: bytes) -> None:
        raise MemoryAccessError(f"MonitorMemory is read-only (refused a {len(data)}-byte write at {pa:#x})")

    def _read_xp(self, start: int, count: int) -> bytes:
        command = f"xp /{count}xg {start:#x}"
        text = self.monitor.hmp(command)
        values: list[int] = []
        expect = start
        for line in text.splitlines():
            if not line.strip():
                continue
            m = _XP_LINE.match(line)
            if m is None:
                raise MemoryAccessError(f"HMP {command!r} at {start:#x}: unexpected answer {text.strip()!r}")
            addr = int(m.group(1), 16)
            words = [int(w, 16) for w in m.group(2).split()]
            if addr != expect:
                raise MemoryAccessError(
                    f"HMP {command!r}: line for {addr:#x} where {expect:#x} was expected: {text.strip()!r}"
                )
            values.extend(words)
            expect += 8 * len(words)
        if len(values) != count:
            raise MemoryAccessError(
                f"HMP {command!r} returned {len(values)} of {count} values: {text.strip()!r}"
            )
        return b"".join(_U64.pack(v) for v in values)

    def _read_pmemsave(self, pa: int, size: int) -> bytes:
        scratch = self.scratch or DirectoryScratch(Path(self.monitor.scratch_dir))
        name = f"pmem-{secrets.token_hex(8)}.bin"
        try:
            self.monitor.command("pmemsave", val=pa, size=size, filename=str(scratch.directory / name))
        except BaseException:
            with contextlib.suppress(OSError):  # remove whatever QEMU left
                scratch.take(name)
            raise
        try:
            data = scratch.take(name)
        except OSError as exc:
            raise MemoryAccessError(f"pmemsave of [{pa:#x}, +{size:#x}) left no readable file: {exc}") from exc
        if len(data) != size:
            raise MemoryAccessError(f"pmemsave of [{pa:#x}, +{size:#x}) wrote {len(data)} bytes, not {size}")
        return data
