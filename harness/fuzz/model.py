"""The DDI fuzzer's host model: what each family holds, which calls are legal now, and for each call
the set of outcomes the docs allow (docs/ddi/*.md, ddi-spec.md).

The model never talks to a VM. `Model.propose(rng)` draws one well-formed call: mostly a legal one,
whose documented outcome is a value (a VA with its alignment and range, an NTSTATUS, NULL for a
documented failure), sometimes (`stop_rate`) a documented misuse whose outcome is a bugcheck with
its parameters. A call's `commit(result)` applies what it did to the model and returns the checks
the runner (harness.fuzz.ddi_run) must make against the VM: every new mapping three ways, every
unmapping by the host walk and QEMU, MDLs as the host reads them from guest RAM, copies by the
host's own reads. `expected_counts()` is what `outstanding` must say at any moment, and
`teardown_call()` frees everything, so that a run ends with nothing outstanding.

What the model does not know (where a small pool block lands, which frames an allocator picks) it
does not predict; what it can know, it checks: alignment, ranges, disjointness, byte offsets, MDL
flags, every leak count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.ddi.base import pool_tag
from harness.ddi.contiguous import MM_ANY_NODE_OK, NO_LIMIT
from harness.ddi.copy import MM_COPY_MEMORY_PHYSICAL, MM_COPY_MEMORY_VIRTUAL, CopyResult
from harness.ddi.dxgk import HIGHEST_ADDRESS, CreateResult, MapResult, OpenResult, PhysicalMemoryType
from harness.ddi.irql import APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL
from harness.ddi.mdl import (
    HIGH_PAGE_PRIORITY,
    IO_MODIFY_ACCESS,
    IO_READ_ACCESS,
    IO_WRITE_ACCESS,
    MDL_HEADER_SIZE,
    MDL_MAPPED_TO_SYSTEM_VA,
    MDL_MAPPING_NO_WRITE,
    MDL_PAGES_LOCKED,
    MDL_PARTIAL,
    MDL_PARTIAL_HAS_BEEN_MAPPED,
    MDL_SOURCE_IS_NONPAGED_POOL,
    MDL_WRITE_OPERATION,
    NORMAL_PAGE_PRIORITY,
    NtRaisedStatus,
    span_pages,
)
from harness.ddi.nt import (
    BAD_POOL_CALLER,
    CACHING_MEMORY_TYPE,
    DRIVER_VERIFIER_DETECTED_VIOLATION,
    IRQL_NOT_GREATER_OR_EQUAL,
    IRQL_NOT_LESS_OR_EQUAL,
    KERNEL_MODE,
    MEMORY_MANAGEMENT,
    MM_CACHED,
    MM_MAXIMUM_CACHE_TYPE,
    PAGE_EXECUTE_READ,
    PAGE_EXECUTE_READWRITE,
    PAGE_NOACCESS,
    PAGE_NOCACHE,
    PAGE_READONLY,
    PAGE_READWRITE,
    PAGE_WRITECOMBINE,
    PAGE_WRITECOPY,
    STATUS_INVALID_ADDRESS,
    STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER,
    STATUS_INVALID_PARAMETER_3,
    STATUS_INVALID_PARAMETER_4,
    STATUS_SUCCESS,
    SYSTEM_PTE_MISUSE,
    USER_MODE,
    VERIFIER_API_WRONG_IRQL,
)
from harness.ddi.pool import (
    NON_PAGED_POOL,
    NON_PAGED_POOL_NX,
    PAGED_POOL,
    POOL_FLAG_CACHE_ALIGNED,
    POOL_FLAG_NON_PAGED,
    POOL_FLAG_NON_PAGED_EXECUTE,
    POOL_FLAG_PAGED,
    POOL_FLAG_SESSION,
    POOL_FLAG_UNINITIALIZED,
    POOL_FLAG_USE_QUOTA,
)
from harness.oracle.paging import MemoryType

PAGE = 0x1000
POOL_SMALL_MAX = 0xFE0
TAG_MDL = pool_tag("MDL ")
# Tags whose first byte is odd: Tag | 1 == Tag, so the reserved-mapping stops' "owner tag" (stored
# as Tag | 1) equals the tag given, and every parameter is predictable without a special case.
TAGS = ("Kfz1", "Mfz2", "Sfz3", "Wfz4")
OTHER_TAG = "Ofzx"
SYSTEM_PTE_BASE = 0xFFFF_F980_0000_0000
SYSTEM_PTE_COUNT = 22000
USER_VIEW_BASE = 0x1020_0000
USER_VIEW_PAGES = 512
LOCAL_APIC = 0xFEE0_0000
IO_APIC = 0xFEC0_0000
IO_HOLE = 0xFEB0_0000  # a hole in every config's physical map: mapped, never touched
HIGHEST_PHYSICAL = (1 << 52) - 1
ADAPTER = 0xADA0_0000_0001

# Leak-count keys the model predicts exactly (pool bytes of the fuzzer's own tags come on top).
COUNTED = ("irql", "mdl_allocated", "mdl_locked_pages", "mdl_mapped_pages", "mdl_user_mapped_pages",
           "mdl_allocated_pages", "reserved_mapping_reservations", "reserved_mapping_mapped_pages",
           "iospace_mappings", "iospace_pages", "contiguous_allocations", "contiguous_pages", "dxgk_objects",
           "dxgk_mappings", "syspte_pages", "syspte_allocations")


def tag_key(tag: str | int) -> str:
    return f"pool_tag_{pool_tag(tag):08x}"


# -- outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """A documented bugcheck: its code and parameters (None: any value)."""

    code: int
    parameters: tuple[int | None, int | None, int | None, int | None]
    why: str

    def matches(self, code: int, parameters: tuple[int, int, int, int]) -> bool:
        return code == self.code and all(p is None or p == q for p, q in zip(self.parameters, parameters,
                                                                             strict=True))

    def describe(self) -> str:
        shown = ", ".join("*" if p is None else f"{p:#x}" for p in self.parameters)
        return f"STOP {self.code:#x}({shown}) [{self.why}]"


def stop(code: int, p1: int | None, p2: int | None, p3: int | None, p4: int | None, why: str) -> Stop:
    return Stop(code, (p1, p2, p3, p4), why)


def irql_stop(irql: int, why: str) -> Stop:
    return stop(DRIVER_VERIFIER_DETECTED_VIOLATION, VERIFIER_API_WRONG_IRQL, irql, 0, 0, why)


Check = Callable[[Any], str]  # the problem with a result, or ''


def returns(description: str, check: Check) -> Outcome:
    return Outcome(description, check)


@dataclass(frozen=True)
class Outcome:
    """What a call may do: return a value `check` accepts, or (when `stops` is given) bugcheck."""

    description: str
    check: Check | None = None
    stops: tuple[Stop, ...] = ()

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.stops) if self.stops else self.description


def _null(result: Any) -> str:
    return "" if result == 0 else f"expected NULL, got {result:#x}"


def _void(result: Any) -> str:
    return "" if result is None else f"expected no value, got {result!r}"


def _equals(value: int) -> Check:
    def check(result: Any) -> str:
        return "" if result == value else f"expected {value:#x}, got {result!r}"
    return check


def _status(wanted: int) -> Check:
    def check(result: Any) -> str:
        status = result.status if hasattr(result, "status") else result
        return "" if status == wanted else f"expected status {wanted:#010x}, got {status:#010x}"
    return check


def _raised(wanted: int) -> Check:
    def check(result: Any) -> str:
        got = result.status if isinstance(result, NtRaisedStatus) else None
        if wanted == STATUS_SUCCESS:
            return "" if got is None else f"expected no exception, the routine raised {got:#010x}"
        return "" if got == wanted else f"expected the routine to raise {wanted:#010x}, got {result!r}"
    return check


# -- checks the runner makes after a call ---------------------------------------------------------


@dataclass(frozen=True)
class MapCheck:
    """[va, va+length) is mapped as given: every page by the host walk, sampled pages three ways.

    `pfns`: ("mdl", address) the MDL's PFN array as the host reads it; ("consecutive", first_pa or
    None) frames in a row (from the first page's own translation when None); ("dxgk", handle,
    first_page) the object's frames; ("any",) no PFN expectation. `owner` registers the frames as
    owned by one object (they must not belong to any other)."""

    va: int
    length: int
    pfns: tuple[Any, ...]
    writable: bool
    user: bool
    executable: bool | None
    cache: MemoryType | None
    owner: str = ""
    within: tuple[int, int] | None = None  # physical range the frames must lie in
    boundary: int = 0  # a multiple of this the frames may not cross


@dataclass(frozen=True)
class UnmapCheck:
    va: int
    length: int
    release: str = ""  # an owner whose frames went back


@dataclass(frozen=True)
class ReleaseFrames:
    owner: str


@dataclass(frozen=True)
class MdlCheck:
    """The MDL as the host reads it: flags, ByteCount, ByteOffset; `pfns_of` ("walk", va, length) the
    host walk of the buffer, or ("distinct",) fresh distinct frames registered under `owner`."""

    mdl: int
    flags: int
    byte_count: int
    byte_offset: int
    pfns_of: tuple[Any, ...] = ()
    owner: str = ""
    zeroed: bool = False


@dataclass(frozen=True)
class GuardWrite:
    """The guest writes `data` at va (the block's guard bytes); GuardCheck later reads them by the host."""

    va: int
    data: bytes


@dataclass(frozen=True)
class GuardCheck:
    va: int
    data: bytes


@dataclass(frozen=True)
class ZeroCheck:
    va: int
    length: int


@dataclass(frozen=True)
class CopyCheck:
    """The target holds what the host reads at the source VA (through its own walk)."""

    target: int
    source: int
    length: int


@dataclass(frozen=True)
class HeaderCheck:
    """A reservation's two header PTEs, raw from guest RAM: (N+2) << 28 and (Tag|1) << 28."""

    va: int
    pages: int
    tag: int


@dataclass(frozen=True)
class DxgkInfoCheck:
    handle: int
    type: int
    cache: int
    size: int
    views: int
    owner: str = ""
    io_base: int | None = None


PostCheck = (MapCheck | UnmapCheck | ReleaseFrames | MdlCheck | GuardWrite | GuardCheck | ZeroCheck | CopyCheck
             | HeaderCheck | DxgkInfoCheck)


def _no_checks(result: Any) -> list[PostCheck]:
    return []


@dataclass
class Call:
    """One DDI call: `vm.mm.<ddi>(*args)`, what it may do, and what it does to the model."""

    family: str
    ddi: str
    args: tuple[int, ...]
    outcome: Outcome
    commit: Callable[[Any], list[PostCheck]] = _no_checks
    irql_limit: int = HIGH_LEVEL
    irql_stop: Callable[[int], Stop] | None = None
    frees: bool = False  # a call that gives something back (teardown order)
    before: list[PostCheck] = field(default_factory=list)  # checks made just before the call
    # A physical address the runner finds before the call and puts at args[pa_position]:
    # ("va", va) the host walk's PA of a VA; ("mdl page", mdl, page, offset) from the MDL's PFN
    # array as the host reads it.
    pa_source: tuple[Any, ...] = ()
    pa_position: int = 0
    outcome_for_pa: Callable[[int], Outcome] | None = None  # the outcome, once the PA is known

    def describe(self) -> str:
        return f"{self.ddi}({', '.join(hex(a) for a in self.args)})"


# -- the families' state --------------------------------------------------------------------------


@dataclass
class PoolBlock:
    va: int
    size: int
    tag: str
    pool_type: int  # NonPagedPool, NonPagedPoolNx, PagedPool
    head: bytes  # guard bytes the guest wrote at the start and at the end of the block
    tail: bytes
    whole_pages: bool  # a big block (or CACHE_ALIGNED): page aligned, whole pages, no header
    mdls: set[int] = field(default_factory=set)  # MDLs describing it

    @property
    def charged(self) -> int:
        """What the pool charges its tag: whole pages for a big block, whole 16-byte units else."""
        return -(-self.size // PAGE) * PAGE if self.whole_pages else -(-self.size // 16) * 16

    @property
    def tail_va(self) -> int:
        return self.va + self.size - len(self.tail)


@dataclass
class Mdl:
    address: int
    kind: str  # "io" (IoAllocateMdl over a pool block), "pages" (MmAllocatePagesForMdlEx), "partial"
    va: int  # described VA (pages: 0)
    length: int
    block: PoolBlock | None = None
    flags: int = 0
    locked: bool = False
    built: bool = False
    system_va: int = 0  # MmMapLockedPagesSpecifyCache / MmGetSystemAddressForMdlSafe
    reservation: int = 0  # mapped into this reservation
    user_views: list[int] = field(default_factory=list)
    io_maps: int = 0  # MmMapIoSpace mappings of its frames
    source: int = 0  # partial: the source MDL
    partials: set[int] = field(default_factory=set)
    pages_freed: bool = False

    @property
    def offset(self) -> int:
        return self.va & (PAGE - 1)

    @property
    def pages(self) -> int:
        return span_pages(self.va, self.length)

    @property
    def mapped(self) -> bool:
        return bool(self.system_va or self.reservation)

    @property
    def busy(self) -> bool:
        """Something refers to it: a mapping of any kind, a partial, an I/O mapping of its frames."""
        return self.mapped or bool(self.user_views or self.io_maps or self.partials)

    @property
    def mappable(self) -> bool:
        """MmMapLockedPagesSpecifyCache / the reserved map accept it as it is."""
        return (self.locked or self.kind == "partial") and not self.built and not self.mapped


@dataclass
class Reservation:
    va: int
    pages: int
    tag: str
    mdl: int = 0


@dataclass
class IoMapping:
    va: int
    bytes: int
    pa: int
    mdl: int = 0


@dataclass
class Contiguous:
    va: int
    bytes: int
    cache: int

    @property
    def pages(self) -> int:
        return span_pages(self.va, self.bytes)


@dataclass
class DxgkView:
    base: int
    size: int
    user: bool


@dataclass
class DxgkObject:
    handle: int
    type: int
    size: int
    cache: int
    read_only: bool
    adapter_object: int  # 0: not associated
    io_base: int = 0
    views: dict[int, DxgkView] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return -(-self.size // PAGE)


@dataclass(frozen=True)
class Environment:
    """What the model needs to know about the VM (from kernel_info and the boot memory map)."""

    levels: int
    pool_base: int
    pool_end: int
    text: tuple[int, int]
    nx: bool
    ram_top: int  # first byte above the highest RAM range
    pfn_db: tuple[int, int] = (0, 0)  # [start, end) of the PFN database's VAs


DXGK_MEMORY_TYPE = {0: MemoryType.UC, 1: MemoryType.WB, 2: MemoryType.WC}
MAP_CACHES = tuple(range(MM_MAXIMUM_CACHE_TYPE))


class Model:
    def __init__(self, env: Environment, *, stop_rate: float = 0.01) -> None:
        self.env = env
        self.stop_rate = stop_rate
        self.reset()

    def reset(self) -> None:
        """A fresh kernel: nothing allocated, PASSIVE_LEVEL."""
        self.irql = PASSIVE_LEVEL
        self.raised_for = 0  # calls left before the IRQL goes back down
        self.pool: dict[int, PoolBlock] = {}
        self.mdls: dict[int, Mdl] = {}
        self.reservations: dict[int, Reservation] = {}
        self.io: dict[int, IoMapping] = {}
        self.contiguous: dict[int, Contiguous] = {}
        self.dxgk: dict[int, DxgkObject] = {}
        self.recent: tuple[Any, ...] = ()  # what the last call freed: a double free must come right after

    @property
    def system_range_start(self) -> int:
        return 0xFF00_0000_0000_0000 if self.env.levels == 5 else 0xFFFF_8000_0000_0000

    # -- what `outstanding` must say -------------------------------------------------------------

    def expected_counts(self) -> dict[str, int]:
        mdls = self.mdls.values()
        syspte_allocations = (len(self.reservations) + sum(1 for m in mdls if m.system_va) + len(self.io)
                              + len(self.contiguous)
                              + sum(1 for o in self.dxgk.values() for v in o.views.values() if not v.user))
        syspte_pages = (sum(r.pages + 2 for r in self.reservations.values())
                        + sum(m.pages for m in mdls if m.system_va)
                        + sum(span_pages(i.va, i.bytes) for i in self.io.values())
                        + sum(c.pages for c in self.contiguous.values())
                        + sum(v.size // PAGE for o in self.dxgk.values() for v in o.views.values() if not v.user))
        counts = {
            "irql": self.irql,
            "mdl_allocated": sum(1 for m in mdls if m.kind != "pages"),
            "mdl_locked_pages": sum(m.pages for m in mdls if m.kind == "io" and m.locked),
            "mdl_mapped_pages": sum(m.pages for m in mdls if m.system_va),
            "mdl_user_mapped_pages": sum(m.pages * len(m.user_views) for m in mdls),
            # DXGK MDL and section objects hold MmAllocatePagesForMdlEx pages too.
            "mdl_allocated_pages": sum(m.pages for m in mdls if m.kind == "pages" and not m.pages_freed)
            + sum(o.pages for o in self.dxgk.values()
                  if o.type in (PhysicalMemoryType.MDL, PhysicalMemoryType.SECTION)),
            "reserved_mapping_reservations": len(self.reservations),
            "reserved_mapping_mapped_pages": sum(self.mdls[r.mdl].pages for r in self.reservations.values()
                                                 if r.mdl),
            "iospace_mappings": len(self.io),
            "iospace_pages": sum(span_pages(i.va, i.bytes) for i in self.io.values()),
            "contiguous_allocations": len(self.contiguous),
            "contiguous_pages": sum(c.pages for c in self.contiguous.values()),
            "dxgk_objects": len(self.dxgk),
            "dxgk_mappings": sum(len(o.views) for o in self.dxgk.values()),
            "syspte_pages": syspte_pages,
            "syspte_allocations": syspte_allocations,
        }
        for tag in TAGS:
            counts[tag_key(tag)] = sum(b.charged for b in self.pool.values() if b.tag == tag)
        return counts

    @property
    def empty(self) -> bool:
        return not (self.pool or self.mdls or self.reservations or self.io or self.contiguous or self.dxgk
                    or self.irql)

    # -- drawing calls ---------------------------------------------------------------------------

    def propose(self, rng: random.Random) -> Call:
        """The next call: the IRQL goes back down when its time is up, else a misuse (documented
        stop) at `stop_rate`, else a legal call of a family drawn at random."""
        if self.irql and self.raised_for <= 0:
            return self._lower()
        # Raised, a misuse is three times as likely, and half of them are a call above its IRQL.
        want_stop = rng.random() < self.stop_rate * (3 if self.irql else 1)
        above_irql = want_stop and self.irql > PASSIVE_LEVEL and rng.random() < 0.5
        for _ in range(200):
            if want_stop and not above_irql:
                call = self._misuse(rng)
            else:
                builder = rng.choices(self._builders, weights=[w for _, w in self._weights])[0]
                call = builder(self, rng)
            if call is None:
                continue
            if call.irql_limit < self.irql or above_irql:
                if not above_irql or call.irql_limit >= self.irql or call.irql_stop is None:
                    continue
                irql, above = self.irql, call.irql_stop
                call.outcome, call.commit = Outcome("", stops=(above(irql),)), _no_checks
                # A stop that names the physical address is made again once the runner found it.
                call.outcome_for_pa = (lambda pa, above=above, irql=irql: Outcome("", stops=(above(irql),))) \
                    if call.pa_source else None
            if self.irql:
                self.raised_for -= 1
            return call
        return self._get_irql()

    def teardown_call(self) -> Call | None:
        """The next call that gives something back, in an order every family accepts; None when empty."""
        if self.irql:
            return self._lower()
        for obj in self.dxgk.values():
            if obj.views:
                return self._dxgk_unmap_view(obj, next(iter(obj.views.values())))
            if obj.adapter_object:
                return self._dxgk_close(obj)
        if self.dxgk:
            return self._dxgk_destroy(next(iter(self.dxgk.values())))
        for io in self.io.values():
            return self._io_unmap(io)
        for m in self.mdls.values():
            if m.user_views:
                return self._mdl_unmap_user(m, m.user_views[0])
        for r in self.reservations.values():
            if r.mdl:
                return self._reserved_unmap(r)
        for m in self.mdls.values():
            if m.kind == "partial":
                return self._mdl_free(m)
        for m in self.mdls.values():
            if m.system_va:
                return self._mdl_unmap(m)
        for m in self.mdls.values():
            if m.kind == "io" and m.locked:
                return self._mdl_unlock(m)
            if m.kind == "pages" and not m.pages_freed:
                return self._mdl_free_pages(m)
        for m in self.mdls.values():
            return self._mdl_free(m)
        for r in self.reservations.values():
            return self._reserved_free(r)
        for c in self.contiguous.values():
            return self._contiguous_free(c)
        for b in self.pool.values():
            return self._pool_free(b)
        return None

    # -- IRQL ------------------------------------------------------------------------------------

    def _raise(self, rng: random.Random) -> Call | None:
        if self.irql:
            return None
        level = rng.choice((APC_LEVEL, APC_LEVEL, DISPATCH_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL))

        def commit(result: Any) -> list[PostCheck]:
            self.irql, self.raised_for = level, rng.randint(1, 4)
            return []
        return Call("irql", "KeRaiseIrql", (level,), returns("the old IRQL, PASSIVE", _equals(PASSIVE_LEVEL)),
                    commit)

    def _lower(self) -> Call:
        def commit(result: Any) -> list[PostCheck]:
            self.irql, self.raised_for = PASSIVE_LEVEL, 0
            return []
        return Call("irql", "KeLowerIrql", (PASSIVE_LEVEL,), returns("nothing", _void), commit, frees=True)

    def _get_irql(self, rng: random.Random | None = None) -> Call:
        return Call("irql", "KeGetCurrentIrql", (), returns(f"IRQL {self.irql}", _equals(self.irql)))

    # -- pool ------------------------------------------------------------------------------------

    def _pool_size(self, rng: random.Random) -> int:
        roll = rng.random()
        if roll < 0.5:
            return rng.randint(1, 0x100)
        if roll < 0.8:
            return rng.randint(0x101, POOL_SMALL_MAX)
        return rng.randint(POOL_SMALL_MAX + 1, 4 * PAGE)

    def _pool_irql_limit(self, pool_type: int) -> int:
        return APC_LEVEL if pool_type == PAGED_POOL else DISPATCH_LEVEL

    def _new_block_outcome(self, size: int, page_aligned: bool) -> Check:
        def check(va: Any) -> str:
            if not va:
                return "NULL: the pool has room for this (the model keeps well inside it)"
            if not (self.env.pool_base <= va and va + size <= self.env.pool_end):
                return f"{va:#x} is outside the pool [{self.env.pool_base:#x}, {self.env.pool_end:#x})"
            if page_aligned and va % PAGE:
                return f"{va:#x} is not page aligned"
            if not page_aligned and (va % 16 or (va % PAGE) + size > PAGE):
                return f"{va:#x} is not 16-byte aligned inside one page"
            for other in self.pool.values():
                if va < other.va + other.size and other.va < va + size:
                    return f"[{va:#x}, +{size:#x}) overlaps the live block [{other.va:#x}, +{other.size:#x})"
            return ""
        return check

    def _block_checks(self, block: PoolBlock, zero: bool) -> list[PostCheck]:
        executable = block.pool_type == NON_PAGED_POOL or not self.env.nx
        checks: list[PostCheck] = [ZeroCheck(block.va, min(block.size, 256))] if zero else []
        checks += [MapCheck(block.va, block.size, ("any",), writable=True, user=False, executable=executable,
                            cache=MemoryType.WB, owner=f"pool:{block.va:#x}" if block.whole_pages else ""),
                   GuardWrite(block.va, block.head), GuardWrite(block.tail_va, block.tail)]
        return checks

    @staticmethod
    def _guard_checks(block: PoolBlock) -> list[PostCheck]:
        return [GuardCheck(block.va, block.head), GuardCheck(block.tail_va, block.tail)]

    @staticmethod
    def _guards(rng: random.Random, size: int) -> tuple[bytes, bytes]:
        n = min(8, size // 2)
        return bytes(rng.randrange(256) for _ in range(n)), bytes(rng.randrange(256) for _ in range(n))

    def _pool_alloc(self, rng: random.Random) -> Call | None:
        if len(self.pool) >= 40:
            return None
        pool_type = rng.choice((NON_PAGED_POOL_NX, NON_PAGED_POOL_NX, NON_PAGED_POOL, PAGED_POOL))
        size, tag = self._pool_size(rng), rng.choice(TAGS)
        head, tail = self._guards(rng, size)
        big = size > POOL_SMALL_MAX

        def commit(va: Any) -> list[PostCheck]:
            block = PoolBlock(va, size, tag, pool_type, head, tail, big)
            self.pool[va] = block
            return self._block_checks(block, zero=False)
        return Call("pool", "ExAllocatePoolWithTag", (pool_type, size, pool_tag(tag)),
                    returns("a block of the pool", self._new_block_outcome(size, big)), commit,
                    irql_limit=self._pool_irql_limit(pool_type),
                    irql_stop=lambda irql: stop(BAD_POOL_CALLER, 0x08, irql, pool_type, size, "allocate at bad IRQL"))

    def _pool_alloc2(self, rng: random.Random) -> Call | None:
        if len(self.pool) >= 40:
            return None
        kind = rng.choice((POOL_FLAG_NON_PAGED, POOL_FLAG_NON_PAGED, POOL_FLAG_NON_PAGED_EXECUTE, POOL_FLAG_PAGED))
        pool_type = {POOL_FLAG_NON_PAGED: NON_PAGED_POOL_NX, POOL_FLAG_NON_PAGED_EXECUTE: NON_PAGED_POOL,
                     POOL_FLAG_PAGED: PAGED_POOL}[kind]
        size, tag = self._pool_size(rng), rng.choice(TAGS)
        extra = rng.choice((0, 0, POOL_FLAG_UNINITIALIZED, POOL_FLAG_CACHE_ALIGNED, 1 << 40))  # 1 << 40: optional
        if rng.random() < 0.15:  # documented failures, NULL and nothing kept: bad flags (at any IRQL), tag 0
            if rng.random() < 0.7:
                bad = rng.choice((kind | POOL_FLAG_USE_QUOTA, kind | POOL_FLAG_SESSION, 0,
                                  POOL_FLAG_NON_PAGED | POOL_FLAG_PAGED, kind | 0x1000))
                return Call("pool", "ExAllocatePool2", (bad, size, pool_tag(tag)), returns("NULL", _null))
            return Call("pool", "ExAllocatePool2", (kind, size, 0), returns("NULL", _null),
                        irql_limit=self._pool_irql_limit(pool_type),
                        irql_stop=lambda irql: stop(BAD_POOL_CALLER, 0x08, irql, pool_type, size,
                                                    "allocate at bad IRQL"))
        flags = kind | extra
        page_aligned = size > POOL_SMALL_MAX or bool(extra & POOL_FLAG_CACHE_ALIGNED)
        head, tail = self._guards(rng, size)

        def commit(va: Any) -> list[PostCheck]:
            block = PoolBlock(va, size, tag, pool_type, head, tail, page_aligned)
            self.pool[va] = block
            return self._block_checks(block, zero=not extra & POOL_FLAG_UNINITIALIZED)
        return Call("pool", "ExAllocatePool2", (flags, size, pool_tag(tag)),
                    returns("a block of the pool", self._new_block_outcome(size, page_aligned)), commit,
                    irql_limit=self._pool_irql_limit(pool_type),
                    irql_stop=lambda irql: stop(BAD_POOL_CALLER, 0x08, irql, pool_type, size, "allocate at bad IRQL"))

    def _free_blocks(self) -> list[PoolBlock]:
        """Blocks no MDL describes."""
        return [b for b in self.pool.values() if not b.mdls]

    def _pool_free(self, block: PoolBlock, rng: random.Random | None = None) -> Call:
        by_tag = rng is None or rng.random() < 0.7
        ddi, args = ("ExFreePoolWithTag", (block.va, pool_tag(block.tag) if rng is None or rng.random() < 0.8
                                           else 0)) if by_tag else ("ExFreePool", (block.va,))
        paged = block.pool_type == PAGED_POOL

        def commit(result: Any) -> list[PostCheck]:
            del self.pool[block.va]
            self.recent = ("pool", block)
            return [UnmapCheck(block.va, block.size, release=f"pool:{block.va:#x}")] if block.whole_pages else []
        return Call("pool", ddi, args, returns("nothing", _void), commit, frees=True, before=self._guard_checks(block),
                    irql_limit=APC_LEVEL if paged else DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(BAD_POOL_CALLER, 0x09, irql, int(paged), block.va, "free at bad IRQL"))

    def _pool_free_any(self, rng: random.Random) -> Call | None:
        blocks = self._free_blocks()
        return self._pool_free(rng.choice(blocks), rng) if blocks else None

    # -- MDLs ------------------------------------------------------------------------------------

    def _mdl_checks(self, m: Mdl, pfns_of: tuple[Any, ...] = (), owner: str = "", zeroed: bool = False) -> MdlCheck:
        return MdlCheck(m.address, m.flags, m.length, m.offset, pfns_of, owner, zeroed)

    def _io_allocate_mdl(self, rng: random.Random) -> Call | None:
        blocks = list(self.pool.values())
        if not blocks or len(self.mdls) >= 24:
            return None
        block = rng.choice(blocks)
        start = rng.randrange(block.size)
        length = rng.randint(1, block.size - start)
        va = block.va + start

        def check(mdl: Any) -> str:
            if not mdl:
                return "NULL for a length in 1..0xFFFFF000"
            if not self.env.pool_base <= mdl < self.env.pool_end or mdl % 16:
                return f"the MDL {mdl:#x} is not a nonpaged pool block"
            return ""

        def commit(mdl: Any) -> list[PostCheck]:
            m = Mdl(mdl, "io", va, length, block)
            self.mdls[mdl] = m
            block.mdls.add(mdl)
            return [self._mdl_checks(m)]
        return Call("mdl", "IoAllocateMdl", (va, length), returns("an MDL", check), commit,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "IoAllocateMdl"))

    def _mdl_io(self, rng: random.Random, pred: Callable[[Mdl], bool]) -> Mdl | None:
        choices = [m for m in self.mdls.values() if pred(m)]
        return rng.choice(choices) if choices else None

    def _mdl_build(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: m.kind == "io" and not (m.locked or m.built or m.busy))
        if m is None:
            return None

        def commit(result: Any) -> list[PostCheck]:
            m.built, m.flags = True, m.flags | MDL_SOURCE_IS_NONPAGED_POOL
            return [self._mdl_checks(m, ("walk", m.va, m.length))]
        return Call("mdl", "MmBuildMdlForNonPagedPool", (m.address,), returns("nothing", _void), commit,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "MmBuildMdlForNonPagedPool"))

    def _mdl_lock(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: m.kind == "io" and not (m.locked or m.built or m.busy))
        if m is None:
            return None
        operation = rng.choice((IO_READ_ACCESS, IO_WRITE_ACCESS, IO_MODIFY_ACCESS))

        def commit(result: Any) -> list[PostCheck]:
            m.locked = True
            m.flags |= MDL_PAGES_LOCKED | (MDL_WRITE_OPERATION if operation != IO_READ_ACCESS else 0)
            return [self._mdl_checks(m, ("walk", m.va, m.length))]
        return Call("mdl", "MmProbeAndLockPages", (m.address, KERNEL_MODE, operation),
                    returns("no exception", _raised(STATUS_SUCCESS)), commit, irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x70, irql, m.address,
                                                KERNEL_MODE, "lock above DISPATCH"))

    def _mdl_unlock(self, m: Mdl) -> Call:
        old_va = m.system_va

        def commit(result: Any) -> list[PostCheck]:
            m.locked, m.system_va = False, 0
            m.flags &= ~(MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA)
            checks: list[PostCheck] = [self._mdl_checks(m)]
            if old_va:
                checks.append(UnmapCheck(old_va, m.length))
            return checks
        return Call("mdl", "MmUnlockPages", (m.address,), returns("nothing", _void), commit, frees=True,
                    irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x78, irql, m.address, 0,
                                                "unlock above DISPATCH"))

    def _mdl_unlock_any(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: m.kind == "io" and m.locked and not m.reservation and not m.user_views
                         and not m.io_maps and not m.partials)
        return self._mdl_unlock(m) if m else None

    def _mdl_allocate_pages(self, rng: random.Random) -> Call | None:
        if len(self.mdls) >= 24:
            return None
        pages = rng.randint(1, 16)
        cache = rng.choice(MAP_CACHES)
        if rng.random() < 0.1:  # documented NULLs
            total, skip = rng.choice(((0, 0), (pages * PAGE, 0x800)))
            return Call("mdl", "MmAllocatePagesForMdlEx", (0, HIGHEST_PHYSICAL, skip, total, cache, 0),
                        returns("NULL", _null), irql_limit=DISPATCH_LEVEL,
                        irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7E, irql, DISPATCH_LEVEL,
                                                    0, "MmAllocatePagesForMdlEx above DISPATCH"))

        def check(mdl: Any) -> str:
            return "" if mdl else f"NULL for {pages} pages of plentiful RAM"

        def commit(mdl: Any) -> list[PostCheck]:
            m = Mdl(mdl, "pages", 0, pages * PAGE, flags=MDL_PAGES_LOCKED, locked=True)
            self.mdls[mdl] = m
            return [self._mdl_checks(m, ("distinct",), owner=f"mdl:{mdl:#x}", zeroed=True)]
        return Call("mdl", "MmAllocatePagesForMdlEx", (0, HIGHEST_PHYSICAL, 0, pages * PAGE, cache, 0),
                    returns("an MDL of fresh pages", check), commit, irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7E, irql, DISPATCH_LEVEL, 0,
                                                "MmAllocatePagesForMdlEx above DISPATCH"))

    def _mdl_free_pages(self, m: Mdl) -> Call:
        old_va = m.system_va

        def commit(result: Any) -> list[PostCheck]:
            m.pages_freed, m.locked, m.system_va = True, False, 0
            m.flags &= ~(MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA)
            checks: list[PostCheck] = [ReleaseFrames(f"mdl:{m.address:#x}")]
            if old_va:
                checks.append(UnmapCheck(old_va, m.length))
            return checks
        return Call("mdl", "MmFreePagesFromMdl", (m.address,), returns("nothing", _void), commit, frees=True,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "MmFreePagesFromMdl"))

    def _mdl_free_pages_any(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: m.kind == "pages" and not m.pages_freed and not m.reservation
                         and not m.user_views and not m.io_maps)
        return self._mdl_free_pages(m) if m else None

    def _mdl_free(self, m: Mdl) -> Call:
        old_va = m.system_va

        def commit(result: Any) -> list[PostCheck]:
            del self.mdls[m.address]
            if m.block is not None:
                m.block.mdls.discard(m.address)
            if m.source:
                self.mdls[m.source].partials.discard(m.address)
            return [UnmapCheck(old_va, m.length)] if old_va else []
        return Call("mdl", "IoFreeMdl", (m.address,), returns("nothing", _void), commit, frees=True,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "IoFreeMdl"))

    def _mdl_free_any(self, rng: random.Random) -> Call | None:
        """IoFreeMdl of an MDL that holds nothing: not locked, no pages, no mapping (a partial's own
        mapping is released by IoFreeMdl itself)."""
        m = self._mdl_io(rng, lambda m: not m.user_views and not m.io_maps and not m.partials and not m.reservation
                         and ((m.kind == "io" and not m.locked and not m.system_va)
                              or (m.kind == "pages" and m.pages_freed) or m.kind == "partial"))
        return self._mdl_free(m) if m else None

    def _map_checks(self, m: Mdl, va: int, cache: int, writable: bool, user: bool) -> list[PostCheck]:
        pfns: tuple[Any, ...] = ("mdl", m.address)
        return [MapCheck(va & ~(PAGE - 1), m.pages * PAGE, pfns, writable=writable, user=user,
                         executable=False if self.env.nx else None, cache=CACHING_MEMORY_TYPE[cache]),
                self._mdl_checks(m)]

    def _mapped_va_check(self, m: Mdl, user: bool) -> Check:
        def check(va: Any) -> str:
            if isinstance(va, NtRaisedStatus):
                return f"the routine raised {va.status:#010x}"
            if not va:
                return "NULL: system PTEs and user views are plentiful"
            if va & (PAGE - 1) != m.offset:
                return f"{va:#x} does not keep the MDL's byte offset {m.offset:#x}"
            if user and not (va >= USER_VIEW_BASE and va + m.length <= USER_VIEW_BASE + USER_VIEW_PAGES * PAGE):
                return f"{va:#x} is not in the user views"
            if not user and not SYSTEM_PTE_BASE <= va < SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE:
                return f"{va:#x} is not in the system-PTE region"
            return ""
        return check

    def _mdl_map(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: m.mappable and (m.kind != "pages" or not m.pages_freed))
        if m is None:
            return None
        cache = rng.choice(MAP_CACHES)
        no_write = rng.random() < 0.2
        priority = rng.choice((NORMAL_PAGE_PRIORITY, HIGH_PAGE_PRIORITY)) | (MDL_MAPPING_NO_WRITE if no_write else 0)
        if rng.random() < 0.08:
            return Call("mdl", "MmMapLockedPagesSpecifyCache", (m.address, KERNEL_MODE, rng.choice((6, 0xFF)),
                                                                0, 0, priority),
                        returns("NULL for a caching type outside 0..5", _null), irql_limit=DISPATCH_LEVEL)

        def commit(va: Any) -> list[PostCheck]:
            m.system_va = va
            m.flags |= MDL_MAPPED_TO_SYSTEM_VA | (MDL_PARTIAL_HAS_BEEN_MAPPED if m.kind == "partial" else 0)
            return self._map_checks(m, va, cache, not no_write, user=False)
        return Call("mdl", "MmMapLockedPagesSpecifyCache", (m.address, KERNEL_MODE, cache, 0, 0, priority),
                    returns("a system VA with the byte offset", self._mapped_va_check(m, user=False)), commit,
                    irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x76, irql, m.address,
                                                KERNEL_MODE, "map above DISPATCH"))

    def _mdl_system_address(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: (m.mappable and m.kind != "partial" and not m.pages_freed)
                         or m.built or bool(m.system_va))
        if m is None:
            return None
        if m.built:
            return Call("mdl", "MmGetSystemAddressForMdlSafe", (m.address, NORMAL_PAGE_PRIORITY),
                        returns("the buffer's own VA", _equals(m.va)), irql_limit=DISPATCH_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "MmGetSystemAddressForMdlSafe"))
        if m.system_va:
            return Call("mdl", "MmGetSystemAddressForMdlSafe", (m.address, NORMAL_PAGE_PRIORITY),
                        returns("the existing mapping", _equals(m.system_va)), irql_limit=DISPATCH_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "MmGetSystemAddressForMdlSafe"))

        def commit(va: Any) -> list[PostCheck]:
            m.system_va = va
            m.flags |= MDL_MAPPED_TO_SYSTEM_VA
            return self._map_checks(m, va, MM_CACHED, True, user=False)
        return Call("mdl", "MmGetSystemAddressForMdlSafe", (m.address, NORMAL_PAGE_PRIORITY),
                    returns("a new system mapping", self._mapped_va_check(m, user=False)), commit,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "MmGetSystemAddressForMdlSafe"))

    def _mdl_unmap(self, m: Mdl) -> Call:
        va = m.system_va

        def commit(result: Any) -> list[PostCheck]:
            m.system_va = 0
            m.flags &= ~(MDL_MAPPED_TO_SYSTEM_VA | MDL_PARTIAL_HAS_BEEN_MAPPED)
            return [UnmapCheck(va, m.length), self._mdl_checks(m)]
        return Call("mdl", "MmUnmapLockedPages", (va, m.address), returns("nothing", _void), commit, frees=True,
                    irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x79, irql, va, m.address,
                                                "unmap above DISPATCH"))

    def _mdl_unmap_any(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: bool(m.system_va))
        return self._mdl_unmap(m) if m else None

    def _user_pages(self) -> int:
        return sum(m.pages * len(m.user_views) for m in self.mdls.values()) + \
            sum(v.size // PAGE for o in self.dxgk.values() for v in o.views.values() if v.user)

    def _mdl_map_user(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: (m.locked or m.built) and m.kind != "partial" and not m.pages_freed
                         and len(m.user_views) < 2)
        if m is None or self._user_pages() + m.pages > USER_VIEW_PAGES // 2:
            return None
        cache = rng.choice(MAP_CACHES)
        if rng.random() < 0.08:
            return Call("mdl", "MmMapLockedPagesSpecifyCache", (m.address, USER_MODE, 6, 0, 0, NORMAL_PAGE_PRIORITY),
                        returns("STATUS_INVALID_PARAMETER_3 raised", _raised(STATUS_INVALID_PARAMETER_3)),
                        irql_limit=APC_LEVEL)

        def commit(va: Any) -> list[PostCheck]:
            m.user_views.append(va)
            return self._map_checks(m, va, cache, True, user=True)
        return Call("mdl", "MmMapLockedPagesSpecifyCache", (m.address, USER_MODE, cache, 0, 0, NORMAL_PAGE_PRIORITY),
                    returns("a user VA with the byte offset", self._mapped_va_check(m, user=True)), commit,
                    irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x77, irql, m.address, USER_MODE,
                                                "user map above APC"))

    def _mdl_unmap_user(self, m: Mdl, va: int) -> Call:
        def commit(result: Any) -> list[PostCheck]:
            m.user_views.remove(va)
            return [UnmapCheck(va, m.length)]
        return Call("mdl", "MmUnmapLockedPages", (va, m.address), returns("nothing", _void), commit, frees=True,
                    irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7A, irql, va, m.address,
                                                "user unmap above APC"))

    def _mdl_unmap_user_any(self, rng: random.Random) -> Call | None:
        m = self._mdl_io(rng, lambda m: bool(m.user_views))
        return self._mdl_unmap_user(m, rng.choice(m.user_views)) if m else None

    def _mdl_partial(self, rng: random.Random) -> Call | None:
        """IoBuildPartialMdl into a target MDL allocated for the sub-range: two calls, the target first."""
        source = self._mdl_io(rng, lambda m: m.kind == "io" and m.locked and not m.mapped and len(m.partials) < 2)
        if source is None or len(self.mdls) >= 24:
            return None
        start = rng.randrange(source.length)
        length = rng.randint(1, source.length - start)
        va = source.va + start
        targets = [t for t in self.mdls.values() if t.kind == "io" and t.va == va and t.length == length
                   and not (t.locked or t.built or t.busy) and t.block is source.block]
        if not targets:
            return self._io_allocate_target(source, va, length)
        target = targets[0]

        def commit(result: Any) -> list[PostCheck]:
            target.kind, target.source, target.flags = "partial", source.address, MDL_PARTIAL
            source.partials.add(target.address)
            return [self._mdl_checks(target, ("walk", va, length))]
        return Call("mdl", "IoBuildPartialMdl", (source.address, target.address, va, length),
                    returns("nothing", _void), commit, irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "IoBuildPartialMdl"))

    def _io_allocate_target(self, source: Mdl, va: int, length: int) -> Call:
        assert source.block is not None
        block = source.block

        def commit(mdl: Any) -> list[PostCheck]:
            m = Mdl(mdl, "io", va, length, block)
            self.mdls[mdl] = m
            block.mdls.add(mdl)
            return [self._mdl_checks(m)]
        return Call("mdl", "IoAllocateMdl", (va, length), returns("an MDL", lambda mdl: "" if mdl else "NULL"),
                    commit, irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, "IoAllocateMdl"))

    # -- reserved mappings -----------------------------------------------------------------------

    def _reserved_allocate(self, rng: random.Random) -> Call | None:
        if len(self.reservations) >= 8:
            return None
        pages, tag = rng.randint(1, 16), rng.choice(TAGS)
        ex = rng.random() < 0.4
        flags = rng.choice((0, 1)) if ex else 0
        if ex and rng.random() < 0.1:
            return Call("reserved", "MmAllocateMappingAddressEx", (pages * PAGE, pool_tag(tag), 2),
                        returns("NULL for an unknown flag", _null), irql_limit=APC_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "MmAllocateMappingAddressEx"))

        def check(va: Any) -> str:
            if not va or va % PAGE or not SYSTEM_PTE_BASE + 2 * PAGE <= va < SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE:
                return f"{va:#x} is not a page of the system-PTE region"
            return ""

        def commit(va: Any) -> list[PostCheck]:
            self.reservations[va] = Reservation(va, pages, tag)
            return [HeaderCheck(va, pages, pool_tag(tag)), UnmapCheck(va, pages * PAGE)]
        ddi, args = (("MmAllocateMappingAddressEx", (pages * PAGE, pool_tag(tag), flags)) if ex
                     else ("MmAllocateMappingAddress", (pages * PAGE, pool_tag(tag))))
        return Call("reserved", ddi, args, returns("a reservation", check), commit, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, ddi))

    def _reserved_map(self, rng: random.Random) -> Call | None:
        free = [r for r in self.reservations.values() if not r.mdl]
        if not free:
            return None
        r = rng.choice(free)
        m = self._mdl_io(rng, lambda m: m.mappable and m.kind != "partial" and not m.pages_freed)
        if m is None:
            return None
        cache = rng.choice(MAP_CACHES)
        if m.pages > r.pages:
            return Call("reserved", "MmMapLockedPagesWithReservedMapping", (r.va, pool_tag(r.tag), m.address, cache),
                        returns("NULL: the MDL spans more pages than reserved", _null), irql_limit=DISPATCH_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "MmMapLockedPagesWithReservedMapping"))

        def commit(va: Any) -> list[PostCheck]:
            r.mdl, m.reservation = m.address, r.va
            m.flags |= MDL_MAPPED_TO_SYSTEM_VA
            return self._map_checks(m, r.va, cache, True, user=False)
        return Call("reserved", "MmMapLockedPagesWithReservedMapping", (r.va, pool_tag(r.tag), m.address, cache),
                    returns("the reservation plus the byte offset", _equals(r.va + m.offset)), commit,
                    irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "MmMapLockedPagesWithReservedMapping"))

    def _reserved_unmap(self, r: Reservation) -> Call:
        m = self.mdls[r.mdl]

        def commit(result: Any) -> list[PostCheck]:
            r.mdl, m.reservation = 0, 0
            m.flags &= ~MDL_MAPPED_TO_SYSTEM_VA
            return [UnmapCheck(r.va, r.pages * PAGE), self._mdl_checks(m)]
        return Call("reserved", "MmUnmapReservedMapping", (r.va, pool_tag(r.tag), m.address),
                    returns("nothing", _void), commit, frees=True, irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "MmUnmapReservedMapping"))

    def _reserved_unmap_any(self, rng: random.Random) -> Call | None:
        mapped = [r for r in self.reservations.values() if r.mdl]
        return self._reserved_unmap(rng.choice(mapped)) if mapped else None

    def _reserved_free(self, r: Reservation) -> Call:
        def commit(result: Any) -> list[PostCheck]:
            del self.reservations[r.va]
            self.recent = ("reservation", r)
            return []
        return Call("reserved", "MmFreeMappingAddress", (r.va, pool_tag(r.tag)), returns("nothing", _void), commit,
                    frees=True, irql_limit=APC_LEVEL, irql_stop=lambda irql: irql_stop(irql, "MmFreeMappingAddress"))

    def _reserved_free_any(self, rng: random.Random) -> Call | None:
        free = [r for r in self.reservations.values() if not r.mdl]
        return self._reserved_free(rng.choice(free)) if free else None

    # -- I/O space -------------------------------------------------------------------------------

    def _io_map(self, rng: random.Random) -> Call | None:
        """MmMapIoSpace(Ex) of device space (local APIC, I/O APIC, a hole), or of RAM an MDL holds locked."""
        if len(self.io) >= 16:
            return None
        mdl, pa = 0, 0
        pa_source: tuple[Any, ...] = ()
        if rng.random() < 0.3:
            held = [m for m in self.mdls.values() if (m.kind == "io" and m.locked)
                    or (m.kind == "pages" and not m.pages_freed)]
            if not held:
                return None
            owner = rng.choice(held)
            mdl, page, offset = owner.address, rng.randrange(owner.pages), rng.randrange(PAGE)
            nbytes = rng.randint(1, PAGE - offset)
            pa_source = ("mdl page", owner.address, page, offset)
        else:
            base = rng.choice((LOCAL_APIC, IO_APIC, IO_HOLE, IO_HOLE + rng.randrange(16) * PAGE))
            pa = base + (rng.randrange(0x20) * 0x10 if rng.random() < 0.5 else 0)
            nbytes = rng.randint(1, 3 * PAGE)
        if rng.random() < 0.3:
            protect = rng.choice((PAGE_READWRITE, PAGE_READONLY, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE))
            modifier = rng.choice((0, PAGE_NOCACHE, PAGE_WRITECOMBINE))
            ddi, third = "MmMapIoSpaceEx", protect | modifier
            if rng.random() < 0.1:
                ddi, third = ddi, rng.choice((PAGE_NOACCESS, PAGE_WRITECOPY, PAGE_READWRITE | PAGE_NOCACHE
                                              | PAGE_WRITECOMBINE, 0))
            writable = protect in (PAGE_READWRITE, PAGE_EXECUTE_READWRITE)
            executable = protect in (PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE) or not self.env.nx
            memory_type = MemoryType.UC if modifier == PAGE_NOCACHE else MemoryType.WC if modifier else MemoryType.WB
            valid = third == protect | modifier
        else:
            third = rng.choice(MAP_CACHES) if rng.random() > 0.08 else rng.choice((6, 0xFFFF_FFFF))
            ddi, writable, executable = "MmMapIoSpace", True, not self.env.nx
            valid = third in MAP_CACHES
            memory_type = CACHING_MEMORY_TYPE[third] if valid else MemoryType.WB
        call = Call("iospace", ddi, (pa, nbytes, third), returns("NULL for the protection or caching type", _null),
                    irql_limit=DISPATCH_LEVEL, pa_source=pa_source)
        call.irql_stop = lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x73, irql, call.args[0], nbytes,
                                           "map I/O space above DISPATCH")
        if not valid:
            return call

        def check(va: Any) -> str:
            if not va:
                return "NULL for a valid I/O mapping"
            if va & (PAGE - 1) != call.args[0] & (PAGE - 1):
                return f"{va:#x} does not keep the physical address's byte offset"
            if not SYSTEM_PTE_BASE <= va < SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE:
                return f"{va:#x} is not in the system-PTE region"
            return ""

        def commit(va: Any) -> list[PostCheck]:
            real_pa = call.args[0]
            self.io[va] = IoMapping(va, nbytes, real_pa, mdl)
            if mdl:
                self.mdls[mdl].io_maps += 1
            return [MapCheck(va & ~(PAGE - 1), span_pages(va, nbytes) * PAGE, ("consecutive", real_pa & ~(PAGE - 1)),
                             writable=writable, user=False, executable=executable, cache=memory_type)]
        call.outcome, call.commit = returns("a system VA with the byte offset", check), commit
        return call

    def _io_unmap(self, io: IoMapping) -> Call:
        def commit(result: Any) -> list[PostCheck]:
            del self.io[io.va]
            if io.mdl:
                self.mdls[io.mdl].io_maps -= 1
            self.recent = ("io", io)
            return [UnmapCheck(io.va, io.bytes)]
        return Call("iospace", "MmUnmapIoSpace", (io.va, io.bytes), returns("nothing", _void), commit, frees=True,
                    irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7B, irql, io.va, io.bytes,
                                                "unmap I/O space above DISPATCH"))

    def _io_unmap_any(self, rng: random.Random) -> Call | None:
        return self._io_unmap(rng.choice(list(self.io.values()))) if self.io else None

    # -- contiguous memory -----------------------------------------------------------------------

    def _contiguous_allocate(self, rng: random.Random) -> Call | None:
        if len(self.contiguous) >= 8:
            return None
        pages = rng.randint(1, 8)
        nbytes = pages * PAGE - rng.choice((0, 0, rng.randrange(PAGE)))
        cache = MM_CACHED
        lowest, highest, boundary = 0, NO_LIMIT, 0
        variant = rng.random()
        top = self.env.ram_top
        args: tuple[int, ...]
        if variant < 0.25:
            highest = rng.choice((NO_LIMIT, top - 1, top // 2 + PAGE * 64))
            ddi, args = "MmAllocateContiguousMemory", (nbytes, highest)
        else:
            cache = rng.choice(MAP_CACHES)
            if rng.random() < 0.5:
                lowest = rng.choice((0, 0x200_0000, top // 4))
                highest = rng.choice((NO_LIMIT, top - 1, lowest + top // 2))
            if rng.random() < 0.4:
                boundary = 1 << rng.randint(max(12, (pages * PAGE - 1).bit_length()), 24)
            if rng.random() < 0.1:  # documented NULLs
                bad = rng.choice(((0, lowest, highest, 0, cache), (nbytes, lowest, highest, 0x3000, cache),
                                  (nbytes, lowest, highest, 0x800, cache), (nbytes, 0x400_0000, 0x200_0000, 0, cache),
                                  (nbytes, lowest, highest, 0, 6), (nbytes, lowest, highest, PAGE, cache)
                                  if pages > 1 else (0, 0, 0, 0, 0)))
                return Call("contiguous", "MmAllocateContiguousMemorySpecifyCache", bad,
                            returns("NULL for the arguments", _null), irql_limit=DISPATCH_LEVEL,
                            irql_stop=lambda irql: irql_stop(irql, "MmAllocateContiguousMemorySpecifyCache"))
            if rng.random() < 0.3:
                node = rng.choice((0, MM_ANY_NODE_OK, 1))
                ddi, args = "MmAllocateContiguousMemorySpecifyCacheNode", (nbytes, lowest, highest, boundary, cache,
                                                                           node)
                if node == 1:
                    return Call("contiguous", ddi, args, returns("NULL for another node", _null),
                                irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, ddi))
            else:
                ddi, args = "MmAllocateContiguousMemorySpecifyCache", (nbytes, lowest, highest, boundary, cache)
        low_pfn, high_pfn = max(-(-lowest // PAGE), 0x100), min(highest, top - 1) // PAGE
        within = (low_pfn * PAGE, (high_pfn + 1) * PAGE)

        def check(va: Any) -> str:
            if not va or va % PAGE or not SYSTEM_PTE_BASE <= va < SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE:
                return f"{va:#x} is not a page of the system-PTE region (the window has room)"
            return ""

        def commit(va: Any) -> list[PostCheck]:
            self.contiguous[va] = Contiguous(va, nbytes, cache)
            return [MapCheck(va, pages * PAGE, ("consecutive", None), writable=True, user=False,
                             executable=False if self.env.nx else None, cache=CACHING_MEMORY_TYPE[cache],
                             owner=f"contig:{va:#x}", within=within, boundary=boundary)]
        return Call("contiguous", ddi, args, returns("a page-aligned system VA", check), commit,
                    irql_limit=DISPATCH_LEVEL, irql_stop=lambda irql: irql_stop(irql, ddi))

    def _contiguous_free(self, c: Contiguous, rng: random.Random | None = None) -> Call:
        specify = rng is not None and rng.random() < 0.4
        ddi, args = (("MmFreeContiguousMemorySpecifyCache", (c.va, c.bytes, c.cache)) if specify
                     else ("MmFreeContiguousMemory", (c.va,)))

        def commit(result: Any) -> list[PostCheck]:
            del self.contiguous[c.va]
            self.recent = ("contiguous", c)
            return [UnmapCheck(c.va, c.pages * PAGE, release=f"contig:{c.va:#x}")]
        return Call("contiguous", ddi, args, returns("nothing", _void), commit, frees=True, irql_limit=DISPATCH_LEVEL,
                    irql_stop=lambda irql: stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x2001A, None, irql, 0,
                                                "free contiguous above DISPATCH"))

    def _contiguous_free_any(self, rng: random.Random) -> Call | None:
        return self._contiguous_free(rng.choice(list(self.contiguous.values())), rng) if self.contiguous else None

    # -- MmCopyMemory ----------------------------------------------------------------------------

    def _copy(self, rng: random.Random) -> Call | None:
        """MmCopyMemory into the middle of a pool block (between its guards), from a pool block or
        kernel text, by VA or by PA; and its documented failures."""
        targets = [b for b in self.pool.values() if b.size - len(b.head) - len(b.tail) >= 16]
        if not targets:
            return None
        target = rng.choice(targets)
        dest, room = target.va + len(target.head), target.size - len(target.head) - len(target.tail)
        n = rng.randint(1, min(room, 3 * PAGE))
        roll = rng.random()

        def call(args: tuple[int, ...], outcome: Outcome, commit: Callable[[Any], list[PostCheck]] = _no_checks,
                 pa_source: tuple[Any, ...] = ()) -> Call:
            return Call("copy", "MmCopyMemory", args, outcome, commit, irql_limit=APC_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "MmCopyMemory"), pa_source=pa_source, pa_position=1)
        if roll < 0.06:
            return call((dest, self.env.text[0], n, rng.choice((0, 3, 4))),
                        returns("STATUS_INVALID_PARAMETER_4, nothing copied",
                                _copy_result(STATUS_INVALID_PARAMETER_4, 0)), lambda r: self._guard_checks(target))
        if roll < 0.14:
            source, flags = rng.choice(((0x1000, MM_COPY_MEMORY_VIRTUAL), (0x0000_8000_0000_0000,
                                                                            MM_COPY_MEMORY_VIRTUAL),
                                        (LOCAL_APIC, MM_COPY_MEMORY_PHYSICAL)))
            return call((dest, source, n, flags),
                        returns("STATUS_INVALID_ADDRESS, nothing copied", _copy_result(STATUS_INVALID_ADDRESS, 0)),
                        lambda r: self._guard_checks(target))
        if roll < 0.18:
            return call((dest, self.env.text[0], 0, MM_COPY_MEMORY_VIRTUAL),
                        returns("success, nothing copied", _copy_result(STATUS_SUCCESS, 0)))
        sources = [b for b in self.pool.values() if b is not target and b.size >= n]
        if sources and rng.random() < 0.7:
            block = rng.choice(sources)
            source_va = block.va + rng.randrange(block.size - n + 1)
        else:
            source_va = rng.randrange(self.env.text[0], self.env.text[1] - n)
        physical = rng.random() < 0.5
        if physical and (source_va + n - 1) // PAGE != source_va // PAGE:
            n = PAGE - source_va % PAGE  # a physical copy of one page: the next frame is not the next page
        flags = MM_COPY_MEMORY_PHYSICAL if physical else MM_COPY_MEMORY_VIRTUAL
        made = call((dest, source_va, n, flags), returns("success, every byte copied", _copy_result(STATUS_SUCCESS, n)),
                    pa_source=("va", source_va) if physical else ())
        made.commit = lambda r: [CopyCheck(dest, source_va, n), *self._guard_checks(target)]
        return made

    # -- DXGK ------------------------------------------------------------------------------------

    def _dxgk_create(self, rng: random.Random) -> Call | None:
        if len(self.dxgk) >= 8:
            return None
        kind = rng.choice((PhysicalMemoryType.MDL, PhysicalMemoryType.CONTIGUOUS_MEMORY, PhysicalMemoryType.SECTION,
                           PhysicalMemoryType.IO_SPACE))
        size = rng.randint(1, 8 * PAGE)
        cache = rng.choice((0, 1, 2))
        if kind == PhysicalMemoryType.SECTION and cache == 0:
            cache = rng.choice((1, 2))
        adapter = ADAPTER if rng.random() < 0.3 else 0
        protection = rng.choice((PAGE_READWRITE, PAGE_READWRITE, PAGE_READONLY, PAGE_WRITECOPY))
        io_base = IO_HOLE + rng.randrange(8) * PAGE
        union = {PhysicalMemoryType.MDL: (0, HIGHEST_ADDRESS, 0, 0),
                 PhysicalMemoryType.CONTIGUOUS_MEMORY: (0, HIGHEST_ADDRESS, 0, 0),
                 PhysicalMemoryType.SECTION: (0, 0, protection, 0),
                 PhysicalMemoryType.IO_SPACE: (io_base, 0, 0, 0)}[kind]
        if rng.random() < 0.12:  # documented STATUS_INVALID_PARAMETER cases
            section = (0, 0, PAGE_READWRITE, 0)
            bad = rng.choice(((adapter, 0, kind, cache, *union), (adapter, size, 4, cache, *union),
                              (adapter, size, kind, 3, *union),
                              (adapter, size, PhysicalMemoryType.SECTION, 0, *section),
                              (adapter, size, PhysicalMemoryType.SECTION, 1, 0, 0, PAGE_READWRITE | PAGE_NOCACHE, 0),
                              (adapter, size, PhysicalMemoryType.IO_SPACE, cache, io_base + 0x10, 0, 0, 0)))
            return Call("dxgk", "DxgkCbCreatePhysicalMemoryObject", bad,
                        returns("STATUS_INVALID_PARAMETER", _status(STATUS_INVALID_PARAMETER)), irql_limit=APC_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "DxgkCbCreatePhysicalMemoryObject"))

        def check(result: Any) -> str:
            assert isinstance(result, CreateResult)
            if result.status != STATUS_SUCCESS:
                return f"status {result.status:#010x} for a valid object of {size:#x} bytes"
            if not result.hPhysicalMemoryObject:
                return "no handle"
            if bool(result.hAdapterMemoryObject) != bool(adapter):
                return f"adapter object {result.hAdapterMemoryObject:#x} with hAdapter {adapter:#x}"
            return ""

        def commit(result: Any) -> list[PostCheck]:
            handle = result.hPhysicalMemoryObject
            read_only = kind == PhysicalMemoryType.SECTION and protection == PAGE_READONLY
            obj = DxgkObject(handle, kind, size, cache, read_only, result.hAdapterMemoryObject,
                             io_base if kind == PhysicalMemoryType.IO_SPACE else 0)
            self.dxgk[handle] = obj
            owner = "" if kind == PhysicalMemoryType.IO_SPACE else f"dxgk:{handle:#x}"
            return [DxgkInfoCheck(handle, kind, cache, size, 0, owner, obj.io_base or None)]
        return Call("dxgk", "DxgkCbCreatePhysicalMemoryObject", (adapter, size, kind, cache, *union),
                    returns("STATUS_SUCCESS and a handle", check), commit, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbCreatePhysicalMemoryObject"))

    def _dxgk_map(self, rng: random.Random) -> Call | None:
        objects = [o for o in self.dxgk.values() if len(o.views) < 4]
        if not objects:
            return None
        obj = rng.choice(objects)
        user = obj.type != PhysicalMemoryType.IO_SPACE and rng.random() < 0.4
        offset = rng.randrange(obj.size)
        size = rng.randint(1, obj.size - offset)
        if user and self._user_pages() + obj.pages > USER_VIEW_PAGES // 2:
            user = False
        mode = USER_MODE if user else KERNEL_MODE
        if rng.random() < 0.1:
            bad = rng.choice(((mode, offset, 0), (mode, offset, obj.size - offset + 1), (2, offset, size))
                             + (((USER_MODE, offset, size),) if obj.type == PhysicalMemoryType.IO_SPACE else ()))
            return Call("dxgk", "DxgkCbMapPhysicalMemory", (obj.handle, *bad),
                        returns("STATUS_INVALID_PARAMETER", _status(STATUS_INVALID_PARAMETER)), irql_limit=APC_LEVEL,
                        irql_stop=lambda irql: irql_stop(irql, "DxgkCbMapPhysicalMemory"))
        first, last = offset // PAGE, (offset + size - 1) // PAGE
        pages = last - first + 1

        def check(result: Any) -> str:
            assert isinstance(result, MapResult)
            if result.status != STATUS_SUCCESS:
                return f"status {result.status:#010x}"
            if result.pMappedAddress % PAGE or result.Offset != offset % PAGE or result.Size != pages * PAGE:
                return f"out fields {result}: expected a page-aligned base, Offset {offset % PAGE:#x}, " \
                       f"Size {pages * PAGE:#x}"
            in_user = USER_VIEW_BASE <= result.pMappedAddress < USER_VIEW_BASE + USER_VIEW_PAGES * PAGE
            in_system = SYSTEM_PTE_BASE <= result.pMappedAddress < SYSTEM_PTE_BASE + SYSTEM_PTE_COUNT * PAGE
            if (user and not in_user) or (not user and not in_system):
                return f"view {result.pMappedAddress:#x} not in the {'user views' if user else 'system PTEs'}"
            return ""

        def commit(result: Any) -> list[PostCheck]:
            base = result.pMappedAddress
            obj.views[base] = DxgkView(base, pages * PAGE, user)
            pfns: tuple[Any, ...] = ("consecutive", obj.io_base + first * PAGE) if obj.io_base \
                else ("dxgk", obj.handle, first)
            return [MapCheck(base, pages * PAGE, pfns, writable=not obj.read_only, user=user,
                             executable=False if self.env.nx else None, cache=DXGK_MEMORY_TYPE[obj.cache])]
        return Call("dxgk", "DxgkCbMapPhysicalMemory", (obj.handle, mode, offset, size),
                    returns("STATUS_SUCCESS and a view", check), commit, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbMapPhysicalMemory"))

    def _dxgk_unmap_view(self, obj: DxgkObject, view: DxgkView) -> Call:
        def commit(result: Any) -> list[PostCheck]:
            del obj.views[view.base]
            self.recent = ("dxgk view", obj, view)
            return [UnmapCheck(view.base, view.size)]
        return Call("dxgk", "DxgkCbUnmapPhysicalMemory", (obj.handle, view.base, view.size),
                    returns("nothing", _void), commit, frees=True, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbUnmapPhysicalMemory"))

    def _dxgk_unmap_any(self, rng: random.Random) -> Call | None:
        objects = [o for o in self.dxgk.values() if o.views]
        if not objects:
            return None
        obj = rng.choice(objects)
        return self._dxgk_unmap_view(obj, rng.choice(list(obj.views.values())))

    def _dxgk_destroy(self, obj: DxgkObject, rng: random.Random | None = None) -> Call:
        pass_adapter = obj.adapter_object if obj.adapter_object and rng is not None and rng.random() < 0.5 else 0

        def commit(result: Any) -> list[PostCheck]:
            del self.dxgk[obj.handle]
            self.recent = ("dxgk", obj)
            return [ReleaseFrames(f"dxgk:{obj.handle:#x}")]
        return Call("dxgk", "DxgkCbDestroyPhysicalMemoryObject", (obj.handle, pass_adapter), returns("nothing", _void),
                    commit, frees=True, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbDestroyPhysicalMemoryObject"))

    def _dxgk_destroy_any(self, rng: random.Random) -> Call | None:
        objects = [o for o in self.dxgk.values() if not o.views]
        return self._dxgk_destroy(rng.choice(objects), rng) if objects else None

    def _dxgk_open(self, rng: random.Random) -> Call | None:
        if not self.dxgk:
            return None
        obj = rng.choice(list(self.dxgk.values()))
        if obj.adapter_object:
            return Call("dxgk", "DxgkCbOpenPhysicalMemoryObject", (obj.handle, ADAPTER),
                        returns("STATUS_INVALID_PARAMETER: already associated", _status(STATUS_INVALID_PARAMETER)),
                        irql_limit=APC_LEVEL, irql_stop=lambda irql: irql_stop(irql, "DxgkCbOpenPhysicalMemoryObject"))
        if rng.random() < 0.15:
            return Call("dxgk", "DxgkCbOpenPhysicalMemoryObject", (obj.handle, 0),
                        returns("STATUS_INVALID_PARAMETER: no adapter", _status(STATUS_INVALID_PARAMETER)),
                        irql_limit=APC_LEVEL, irql_stop=lambda irql: irql_stop(irql, "DxgkCbOpenPhysicalMemoryObject"))

        def check(result: Any) -> str:
            assert isinstance(result, OpenResult)
            if result.status != STATUS_SUCCESS or not result.hAdapterMemoryObject:
                return f"expected STATUS_SUCCESS and an adapter object, got {result}"
            return ""

        def commit(result: Any) -> list[PostCheck]:
            obj.adapter_object = result.hAdapterMemoryObject
            return []
        return Call("dxgk", "DxgkCbOpenPhysicalMemoryObject", (obj.handle, ADAPTER),
                    returns("STATUS_SUCCESS and an adapter object", check), commit, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbOpenPhysicalMemoryObject"))

    def _dxgk_close(self, obj: DxgkObject) -> Call:
        adapter_object = obj.adapter_object

        def commit(result: Any) -> list[PostCheck]:
            obj.adapter_object = 0
            self.recent = ("adapter object", adapter_object)
            return []
        return Call("dxgk", "DxgkCbClosePhysicalMemoryObject", (adapter_object,), returns("nothing", _void), commit,
                    frees=True, irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbClosePhysicalMemoryObject"))

    def _dxgk_close_any(self, rng: random.Random) -> Call | None:
        objects = [o for o in self.dxgk.values() if o.adapter_object]
        return self._dxgk_close(rng.choice(objects)) if objects else None

    def _dxgk_stale(self, rng: random.Random) -> Call | None:
        """A handle that names no object: NTSTATUS calls answer STATUS_INVALID_HANDLE."""
        if not self.recent or self.recent[0] != "dxgk":
            return None
        handle = self.recent[1].handle
        return Call("dxgk", "DxgkCbMapPhysicalMemory", (handle, KERNEL_MODE, 0, PAGE),
                    returns("STATUS_INVALID_HANDLE", _status(STATUS_INVALID_HANDLE)), irql_limit=APC_LEVEL,
                    irql_stop=lambda irql: irql_stop(irql, "DxgkCbMapPhysicalMemory"))

    # -- misuse: documented bugchecks ------------------------------------------------------------

    def _misuse(self, rng: random.Random) -> Call | None:
        options: list[Call] = []
        irql = self.irql

        def add(family: str, ddi: str, args: tuple[int, ...], *stops: Stop) -> None:
            options.append(Call(family, ddi, args, Outcome("", stops=stops)))

        if irql:
            add("irql", "KeRaiseIrql", (irql - 1,) if irql > 1 else (PASSIVE_LEVEL,),
                stop(IRQL_NOT_GREATER_OR_EQUAL, irql, irql - 1 if irql > 1 else 0, 0, 0, "raise below the current"))
        if irql < HIGH_LEVEL:
            new = HIGH_LEVEL if irql else DISPATCH_LEVEL
            add("irql", "KeLowerIrql", (new,), stop(IRQL_NOT_LESS_OR_EQUAL, new, irql, 0, 0, "lower above the current"))
        # A free checks the IRQL once it knows the address is in the pool, before the block itself.
        blocks = [b for b in self._free_blocks() if irql <= self._pool_irql_limit(b.pool_type)]
        if blocks:
            b = rng.choice(blocks)
            add("pool", "ExFreePoolWithTag", (b.va, pool_tag(OTHER_TAG)),
                stop(BAD_POOL_CALLER, 0x0A, b.va, pool_tag(b.tag), pool_tag(OTHER_TAG), "free with another tag"))
            if b.va % PAGE and b.size > 16:
                inside = b.va + 16 * rng.randint(1, (b.size - 1) // 16) if b.size > 16 else b.va + 16
                if inside < b.va + b.size:
                    add("pool", "ExFreePoolWithTag", (inside, pool_tag(b.tag)),
                        stop(BAD_POOL_CALLER, 0x46, inside, 0, 0, "free inside a block"))
        if self.recent and self.recent[0] == "pool" and irql <= self._pool_irql_limit(self.recent[1].pool_type):
            b = self.recent[1]
            if b.whole_pages:
                add("pool", "ExFreePoolWithTag", (b.va, pool_tag(b.tag)),
                    stop(BAD_POOL_CALLER, 0x07, 0, 0, b.va, "double free of a big block"))
            else:
                add("pool", "ExFreePoolWithTag", (b.va, pool_tag(b.tag)),
                    stop(BAD_POOL_CALLER, 0x07, 0, None, b.va, "double free"),
                    stop(BAD_POOL_CALLER, 0x46, b.va, 0, 0, "double free of a block merged into its neighbour"))
        add("pool", "ExFreePool", (0x1000,), stop(BAD_POOL_CALLER, 0x40, 0x1000, self.system_range_start, 0,
                                                  "free of a user address"))
        add("pool", "ExFreePool", (self.env.text[0] + 0x40,),
            stop(BAD_POOL_CALLER, 0x42, self.env.text[0] + 0x40, 0, 0, "free outside the pool"))
        if irql <= DISPATCH_LEVEL:
            add("pool", "ExAllocatePoolWithTag", (NON_PAGED_POOL_NX, 0, pool_tag(TAGS[0])),
                stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x00, irql, NON_PAGED_POOL_NX, 0, "zero bytes"))
            add("pool", "ExAllocatePoolWithTag", (NON_PAGED_POOL_NX, 64, 0),
                stop(BAD_POOL_CALLER, 0x9B, NON_PAGED_POOL_NX, 64, None, "tag 0"))
        for m in self.mdls.values():
            if irql > DISPATCH_LEVEL:
                break
            if m.kind == "io" and not m.locked and not m.built and not m.busy:
                add("mdl", "MmMapLockedPagesSpecifyCache", (m.address, KERNEL_MODE, MM_CACHED, 0, 0,
                                                            NORMAL_PAGE_PRIORITY),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB3, m.address, m.flags, MDL_PAGES_LOCKED,
                         "map an unlocked MDL"))
                add("mdl", "MmUnlockPages", (m.address,),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7C, m.address, m.flags, 0, "unlock an unlocked MDL"))
            if m.built and not m.busy:
                add("mdl", "MmMapLockedPagesSpecifyCache", (m.address, KERNEL_MODE, MM_CACHED, 0, 0,
                                                            NORMAL_PAGE_PRIORITY),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, m.address, m.flags, MDL_SOURCE_IS_NONPAGED_POOL,
                         "map a nonpaged-built MDL"))
                add("mdl", "MmUnlockPages", (m.address,),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x7D, m.address, m.flags, 0, "unlock a built MDL"))
            if m.system_va and m.kind != "partial":
                add("mdl", "MmMapLockedPagesSpecifyCache", (m.address, KERNEL_MODE, MM_CACHED, 0, 0,
                                                            NORMAL_PAGE_PRIORITY),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB2, m.address, m.flags, MDL_MAPPED_TO_SYSTEM_VA,
                         "map a mapped MDL"))
                add("mdl", "IoFreeMdl", (m.address,),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB8, m.address, m.flags, 0, "free a mapped MDL"))
            if m.kind == "pages" and not m.pages_freed and not m.system_va and m.offset == 0:
                va = SYSTEM_PTE_BASE + 0x10_0000
                add("mdl", "MmUnmapLockedPages", (va, m.address),
                    stop(SYSTEM_PTE_MISUSE, 0x06, m.address, va, m.pages, "unmap an MDL never mapped"))
            if m.kind == "io" and m.locked and not m.busy:
                add("mdl", "MmFreePagesFromMdl", (m.address,),
                    stop(MEMORY_MANAGEMENT, 0x1236, m.address, m.address + MDL_HEADER_SIZE, None,
                         "free pool pages as MDL pages"))
            if m.kind == "partial" and not m.mapped:
                add("mdl", "MmUnlockPages", (m.address,),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB4, m.address, m.flags, MDL_PARTIAL,
                         "unlock a partial MDL"))
            add("mdl", "MmMapLockedPages", (m.address, KERNEL_MODE),
                stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x81, m.address, m.flags, 0, "MmMapLockedPages is obsolete"))
            if m.user_views and irql <= APC_LEVEL:
                add("mdl", "IoFreeMdl", (m.address,),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0xB8, m.address, m.flags, 0, "free an MDL mapped to user"))
        for r in self.reservations.values():
            if irql > APC_LEVEL:
                break
            tag, other = pool_tag(r.tag), pool_tag(OTHER_TAG)
            add("reserved", "MmFreeMappingAddress", (r.va, other),
                stop(SYSTEM_PTE_MISUSE, 0x101, r.va, other, tag, "free with another tag"))
            if r.mdl:
                add("reserved", "MmFreeMappingAddress", (r.va, tag),
                    stop(SYSTEM_PTE_MISUSE, 0x103, None, tag, r.pages, "free while mapped"))
                add("reserved", "MmUnmapReservedMapping", (r.va, other, r.mdl),
                    stop(SYSTEM_PTE_MISUSE, 0x108, r.va, other, tag, "unmap with another tag"))
            else:
                mappable = [m for m in self.mdls.values() if m.mappable and m.kind != "partial" and not m.pages_freed
                            and m.pages <= r.pages]
                if mappable:
                    m = rng.choice(mappable)
                    add("reserved", "MmMapLockedPagesWithReservedMapping", (r.va, other, m.address, MM_CACHED),
                        stop(SYSTEM_PTE_MISUSE, 0x104, r.va, other, tag, "map with another tag"))
                    add("reserved", "MmUnmapReservedMapping", (r.va, tag, m.address),
                        stop(SYSTEM_PTE_MISUSE, 0x10B, r.va, tag, m.pages, "unmap what is not mapped"))
        if self.recent and self.recent[0] == "reservation" and irql <= APC_LEVEL:
            r = self.recent[1]
            add("reserved", "MmFreeMappingAddress", (r.va, pool_tag(r.tag)),
                stop(SYSTEM_PTE_MISUSE, 0x101, r.va, pool_tag(r.tag), 0, "double free"))
        if irql <= APC_LEVEL:
            add("reserved", "MmAllocateMappingAddress", (0, pool_tag(TAGS[1])),
                stop(SYSTEM_PTE_MISUSE, 0x100, 0, pool_tag(TAGS[1]), None, "reserve zero bytes"))
        for io in self.io.values():
            if irql > DISPATCH_LEVEL:
                break
            wrong = io.bytes + PAGE
            add("iospace", "MmUnmapIoSpace", (io.va, wrong),
                stop(SYSTEM_PTE_MISUSE, 0x400, io.va, span_pages(io.va, wrong), 0, "unmap with another size"))
        if self.recent and self.recent[0] == "io" and irql <= DISPATCH_LEVEL:
            io = self.recent[1]
            add("iospace", "MmUnmapIoSpace", (io.va, io.bytes),
                stop(SYSTEM_PTE_MISUSE, 0x400, io.va, span_pages(io.va, io.bytes), 0, "double unmap"))
        unlocked = [b for b in self.pool.values() if b.va % PAGE == 0 and b.size > POOL_SMALL_MAX and not b.mdls]
        if unlocked and irql <= DISPATCH_LEVEL:
            b = rng.choice(unlocked)
            options.append(Call("iospace", "MmMapIoSpace", (0, PAGE, MM_CACHED), Outcome("", stops=(
                stop(MEMORY_MANAGEMENT, 0x1233, None, 0, 0, "map unlocked RAM as I/O space"),)),
                pa_source=("va", b.va), outcome_for_pa=lambda pa: Outcome("", stops=(
                    stop(MEMORY_MANAGEMENT, 0x1233, pa >> 12, 0, 0, "map unlocked RAM as I/O space"),))))
        for c in self.contiguous.values():
            if irql > DISPATCH_LEVEL:
                break
            if c.pages > 1:
                add("contiguous", "MmFreeContiguousMemory", (c.va + PAGE,),
                    stop(BAD_POOL_CALLER, 0x60, c.va + PAGE, 0, 0, "free inside an allocation"))
        if self.recent and self.recent[0] == "contiguous" and irql <= DISPATCH_LEVEL:
            c = self.recent[1]
            add("contiguous", "MmFreeContiguousMemory", (c.va,),
                stop(BAD_POOL_CALLER, 0x60, c.va, 0, 0, "double free"))
        if irql <= APC_LEVEL:
            for obj in self.dxgk.values():
                if obj.views:
                    add("dxgk", "DxgkCbDestroyPhysicalMemoryObject", (obj.handle, 0),
                        stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x1001, obj.handle, 0, len(obj.views),
                             "destroy with live views"))
                    view = next(iter(obj.views.values()))
                    if view.size > PAGE:
                        add("dxgk", "DxgkCbUnmapPhysicalMemory", (obj.handle, view.base, PAGE),
                            stop(SYSTEM_PTE_MISUSE, 0x303, view.base, 1, 0, "unmap with another size"))
            if self.recent and self.recent[0] == "dxgk":
                handle = self.recent[1].handle
                add("dxgk", "DxgkCbDestroyPhysicalMemoryObject", (handle, 0),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x1000, handle, 0, 0, "destroy twice"))
            if self.recent and self.recent[0] == "dxgk view":
                obj, view = self.recent[1], self.recent[2]
                if obj.handle in self.dxgk:
                    add("dxgk", "DxgkCbUnmapPhysicalMemory", (obj.handle, view.base, view.size),
                        stop(SYSTEM_PTE_MISUSE, 0x303, view.base, view.size >> 12, 0, "unmap twice"))
            if self.recent and self.recent[0] == "adapter object":
                add("dxgk", "DxgkCbClosePhysicalMemoryObject", (self.recent[1],),
                    stop(DRIVER_VERIFIER_DETECTED_VIOLATION, 0x1000, self.recent[1], 0, 0, "close twice"))
        return rng.choice(options) if options else None

    _weights: ClassVar[list[tuple[Callable[[Model, random.Random], Call | None], int]]] = []
    _builders: ClassVar[list[Callable[[Model, random.Random], Call | None]]] = []


def _copy_result(status: int, transferred: int) -> Check:
    def check(result: Any) -> str:
        assert isinstance(result, CopyResult)
        if (result.status, result.transferred) != (status, transferred):
            return f"expected status {status:#010x} and {transferred} bytes, got {result.status:#010x} and " \
                   f"{result.transferred}"
        return ""
    return check


Model._weights = [
    (Model._raise, 4), (Model._get_irql, 1),
    (Model._pool_alloc, 10), (Model._pool_alloc2, 5), (Model._pool_free_any, 12),
    (Model._io_allocate_mdl, 6), (Model._mdl_build, 2), (Model._mdl_lock, 5), (Model._mdl_unlock_any, 4),
    (Model._mdl_allocate_pages, 4), (Model._mdl_free_pages_any, 3), (Model._mdl_free_any, 6),
    (Model._mdl_map, 5), (Model._mdl_system_address, 3), (Model._mdl_unmap_any, 4), (Model._mdl_map_user, 2),
    (Model._mdl_unmap_user_any, 2), (Model._mdl_partial, 2),
    (Model._reserved_allocate, 3), (Model._reserved_map, 4), (Model._reserved_unmap_any, 4),
    (Model._reserved_free_any, 3),
    (Model._io_map, 4), (Model._io_unmap_any, 4),
    (Model._contiguous_allocate, 3), (Model._contiguous_free_any, 3),
    (Model._copy, 5),
    (Model._dxgk_create, 3), (Model._dxgk_map, 4), (Model._dxgk_unmap_any, 4), (Model._dxgk_destroy_any, 3),
    (Model._dxgk_open, 2), (Model._dxgk_close_any, 2), (Model._dxgk_stale, 1),
]
Model._builders = [b for b, _ in Model._weights]
