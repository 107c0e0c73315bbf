"""Unit tests of guest-physical memory backends and the QEMU RAM layout (no VM)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from harness.oracle.memory import (
    ArrayBackedMemory,
    BufferMemory,
    MemoryAccessError,
    MonitorMemory,
    PageCache,
    PhysicalMemory,
    RamLayout,
    RamRegion,
    RemoteRamMemory,
    SharedRamMemory,
)
from harness.oracle.paging import PTE_NX, PTE_P, PTE_RW, SIZE_2M, PagingMode, to_s64
from harness.oracle.synth import PageTableBuilder, synthetic_address_space
from harness.oracle.walker import snapshot, translate_many, walk

MiB = 1 << 20
GiB = 1 << 30


def regions(layout: RamLayout) -> list[tuple[int, int, int]]:
    return [(r.gpa_start, r.size, r.file_offset) for r in layout.regions]


# --------------------------------------------------------------------------------------------------
# RamLayout.for_machine (QEMU 7.2 splits)


@pytest.mark.parametrize(
    ("machine", "ram", "max_below", "expected"),
    [
        # pc (hw/i386/pc_piix.c pc_init1), including the examples in its comment
        ("pc", 256 * MiB, None, [(0, 256 * MiB, 0)]),
        ("pc", 3 * GiB, None, [(0, 3 * GiB, 0)]),
        ("pc", 3584 * MiB - 4096, None, [(0, 3584 * MiB - 4096, 0)]),
        ("pc", 3584 * MiB, None, [(0, 3 * GiB, 0), (4 * GiB, 512 * MiB, 3 * GiB)]),
        ("pc", 4 * GiB, None, [(0, 3 * GiB, 0), (4 * GiB, 1 * GiB, 3 * GiB)]),
        ("pc-i440fx-7.2", 4 * GiB, None, [(0, 3 * GiB, 0), (4 * GiB, 1 * GiB, 3 * GiB)]),
        ("pc-1.7", 4 * GiB, None, [(0, 3584 * MiB, 0), (4 * GiB, 512 * MiB, 3584 * MiB)]),
        ("pc-i440fx-1.7", 4 * GiB, None, [(0, 3584 * MiB, 0), (4 * GiB, 512 * MiB, 3584 * MiB)]),
        ("pc", 4 * GiB, 2 * GiB, [(0, 2 * GiB, 0), (4 * GiB, 2 * GiB, 2 * GiB)]),
        ("pc", 3968 * MiB, 4 * GiB, [(0, 3968 * MiB, 0)]),
        ("pc", 1 * GiB, 512 * MiB, [(0, 512 * MiB, 0), (4 * GiB, 512 * MiB, 512 * MiB)]),
        ("isapc", 4 * GiB, None, [(0, 3 * GiB, 0), (4 * GiB, 1 * GiB, 3 * GiB)]),
        # q35 (hw/i386/pc_q35.c pc_q35_init)
        ("q35", 256 * MiB, None, [(0, 256 * MiB, 0)]),
        ("q35", 2816 * MiB - 4096, None, [(0, 2816 * MiB - 4096, 0)]),
        ("q35", 2816 * MiB, None, [(0, 2 * GiB, 0), (4 * GiB, 768 * MiB, 2 * GiB)]),
        ("q35", 4 * GiB, None, [(0, 2 * GiB, 0), (4 * GiB, 2 * GiB, 2 * GiB)]),
        ("pc-q35-7.2", 4 * GiB, None, [(0, 2 * GiB, 0), (4 * GiB, 2 * GiB, 2 * GiB)]),
        ("q35", 2 * GiB, 1 * GiB, [(0, 1 * GiB, 0), (4 * GiB, 1 * GiB, 1 * GiB)]),
        ("q35", 2 * GiB, 4 * GiB, [(0, 2 * GiB, 0)]),  # the user limit only lowers the split
        ("q35", 2 * GiB, 0, [(0, 2 * GiB, 0)]),  # 0 = unset, as in QEMU
        # microvm (hw/i386/microvm.c microvm_memory_init)
        ("microvm", 256 * MiB, None, [(0, 256 * MiB, 0)]),
        ("microvm", 3 * GiB, None, [(0, 3 * GiB, 0)]),
        ("microvm", 3 * GiB + 4096, None, [(0, 3 * GiB, 0), (4 * GiB, 4096, 3 * GiB)]),
        ("microvm", 8 * GiB, None, [(0, 3 * GiB, 0), (4 * GiB, 5 * GiB, 3 * GiB)]),
        ("microvm,pit=off", 256 * MiB, None, [(0, 256 * MiB, 0)]),
    ],
)
def test_for_machine(
    machine: str, ram: int, max_below: int | None, expected: list[tuple[int, int, int]]
) -> None:
    layout = RamLayout.for_machine(machine, ram, max_below)
    assert regions(layout) == expected
    assert layout.total_size == ram
    assert layout.file_size == ram


def test_for_machine_errors() -> None:
    with pytest.raises(ValueError, match="no max-ram-below-4g"):
        RamLayout.for_machine("microvm", GiB, 512 * MiB)
    with pytest.raises(ValueError, match="exceeds 4 GiB"):
        RamLayout.for_machine("pc", GiB, 5 * GiB)
    with pytest.raises(ValueError, match="unknown machine"):
        RamLayout.for_machine("virt", GiB)
    with pytest.raises(ValueError, match="positive"):
        RamLayout.for_machine("pc", 0)


def test_for_machine_above_4g_base() -> None:
    layout = RamLayout.for_machine("q35", 4 * GiB, above_4g_base=1 << 40)
    assert regions(layout) == [(0, 2 * GiB, 0), (1 << 40, 2 * GiB, 2 * GiB)]


# --------------------------------------------------------------------------------------------------
# RamLayout queries


def test_layout_lookup() -> None:
    layout = RamLayout.for_machine("q35", 4 * GiB)
    assert layout.file_offset(0x1000) == 0x1000
    assert layout.file_offset(4 * GiB + 0x2000, 8) == 2 * GiB + 0x2000
    assert layout.region_of(3 * GiB) is None
    assert layout.contains(2 * GiB - 8, 8) and not layout.contains(2 * GiB - 4, 8)
    with pytest.raises(MemoryAccessError) as exc:
        layout.file_offset(3 * GiB, 8)
    msg = str(exc.value)
    assert "0xc0000000" in msg and "[0x0, 0x80000000)" in msg and "[0x100000000, 0x180000000)" in msg


def test_layout_spans_cross_touching_regions() -> None:
    layout = RamLayout([(0, 0x2000, 0x5000), (0x2000, 0x1000, 0x0)])
    assert layout.spans(0x1FF8, 16) == [(0x6FF8, 8), (0x0, 8)]
    with pytest.raises(MemoryAccessError):
        layout.spans(0x2FF8, 16)
    with pytest.raises(MemoryAccessError):
        layout.spans(-8, 8)


@pytest.mark.parametrize(
    ("regs", "words"),
    [
        ([], "at least one"),
        ([(0, 0x1800, 0)], "4 KiB aligned"),
        ([(0, 0x2000, 0), (0x1000, 0x1000, 0x2000)], "guest-physical"),
        ([(0, 0x2000, 0), (0x4000, 0x1000, 0x1000)], "backend file"),
        ([(0, 0, 0)], "bad RAM region"),
    ],
)
def test_layout_validation(regs: list[tuple[int, int, int]], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RamLayout(regs)


def test_layout_vectorised_offsets_match_scalar() -> None:
    for layout in (RamLayout.for_machine("pc", 4 * GiB), RamLayout.identity(64 * MiB)):
        rng = np.random.default_rng(1)
        pas = rng.integers(0, 6 * GiB, size=4000, dtype=np.uint64) & ~np.uint64(7)
        extra = [0, 3 * GiB - 8, 3 * GiB, 4 * GiB - 8, 4 * GiB, 5 * GiB - 8, 5 * GiB, 64 * MiB - 8, 64 * MiB]
        pas = np.concatenate([pas, np.array(extra, dtype=np.uint64)])
        offs, inside = layout.file_offsets(pas)
        for pa, off, ok in zip(pas.tolist(), offs.tolist(), inside.tolist(), strict=True):
            assert ok == layout.contains(pa, 8), hex(pa)
            if ok:
                assert off == layout.file_offset(pa, 8)


def test_layout_equality_and_repr() -> None:
    a = RamLayout.for_machine("pc", 4 * GiB)
    b = RamLayout([RamRegion(4 * GiB, GiB, 3 * GiB), (0, 3 * GiB, 0)])
    assert a == b and hash(a) == hash(b)
    assert "RamRegion" in repr(a)


# --------------------------------------------------------------------------------------------------
# BufferMemory


def test_buffer_memory_multi_region() -> None:
    layout = RamLayout([(0, 0x2000, 0x1000), (0x10000, 0x1000, 0)])
    mem = BufferMemory(layout)
    assert isinstance(mem, PhysicalMemory) and isinstance(mem, ArrayBackedMemory)
    mem.write(0x10FF8, (0x1122334455667788).to_bytes(8, "little"))
    assert mem.buffer[0xFF8:0x1000] == (0x1122334455667788).to_bytes(8, "little")
    assert mem.read_u64(0x10FF8) == 0x1122334455667788
    assert mem.u64_array()[0x1FF] == 0x1122334455667788
    mem.write_u64(0x8, 0xAB)
    assert mem.buffer[0x1008] == 0xAB and mem.read(0x8, 2) == b"\xab\x00"
    with pytest.raises(MemoryAccessError, match="not inside guest RAM"):
        mem.read(0x1FFC, 8)
    with pytest.raises(ValueError, match="smaller"):
        BufferMemory(layout, bytearray(10))


# --------------------------------------------------------------------------------------------------
# SharedRamMemory on a real file


def make_ram_file(tmp_path: Path, layout: RamLayout) -> Path:
    path = tmp_path / "guest.ram"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, layout.file_size)
    finally:
        os.close(fd)
    return path


def test_shared_ram_reads_and_writes(tmp_path: Path) -> None:
    layout = RamLayout([(0, 1 * MiB, 0), (4 * GiB, 1 * MiB, 1 * MiB), (8 * GiB, 64 * 1024, 2 * MiB)])
    path = make_ram_file(tmp_path, layout)
    with open(path, "r+b") as f:
        f.seek(1 * MiB + 0x40)
        f.write(b"high-region")
        f.seek(2 * MiB + 0x10)
        f.write((0xDEADBEEF).to_bytes(8, "little"))
    with SharedRamMemory(path, layout) as mem:
        assert isinstance(mem, PhysicalMemory) and isinstance(mem, ArrayBackedMemory)
        assert mem.read(4 * GiB + 0x40, 11) == b"high-region"
        assert mem.read_u64(8 * GiB + 0x10) == 0xDEADBEEF
        mem.write(0x123, b"low")
        mem.write_u64(4 * GiB + 0x1000, 0x0102030405060708)
        # Zero-copy views see the writes, and writes through views reach the file.
        assert bytes(mem.view(0x123, 3)) == b"low"
        assert mem.u64_array()[(1 * MiB + 0x1000) // 8] == 0x0102030405060708
        assert bytes(mem.array[0x123:0x126]) == b"low"
        with pytest.raises(MemoryAccessError) as exc:
            mem.read(2 * GiB, 8)
        assert "0x80000000" in str(exc.value) and "[0x100000000, 0x100100000)" in str(exc.value)
        with pytest.raises(MemoryAccessError):
            mem.read_u64(1 * MiB)
    assert mem.closed
    data = path.read_bytes()
    assert data[0x123:0x126] == b"low"
    assert data[1 * MiB + 0x1000 : 1 * MiB + 0x1008] == (0x0102030405060708).to_bytes(8, "little")
    with pytest.raises(MemoryAccessError, match="closed"):
        mem.read(0, 1)


def test_shared_ram_read_only(tmp_path: Path) -> None:
    layout = RamLayout.identity(64 * 1024)
    path = make_ram_file(tmp_path, layout)
    path.write_bytes(b"\x07" * 65536)
    mem = SharedRamMemory(path, layout, writable=False)
    try:
        assert mem.read(0x10, 2) == b"\x07\x07"
        with pytest.raises(MemoryAccessError, match="read-only"):
            mem.write(0, b"x")
    finally:
        mem.close()


def test_shared_ram_file_too_small(tmp_path: Path) -> None:
    layout = RamLayout.identity(1 * MiB)
    path = tmp_path / "small.ram"
    path.write_bytes(bytes(4096))
    with pytest.raises(MemoryAccessError, match="needs 0x100000"):
        SharedRamMemory(path, layout)


def test_shared_ram_close_with_live_views(tmp_path: Path) -> None:
    layout = RamLayout.identity(64 * 1024)
    path = make_ram_file(tmp_path, layout)
    mem = SharedRamMemory(path, layout)
    view = mem.u64_array()[:4]
    with pytest.raises(MemoryAccessError, match="still alive"):
        mem.close()
    assert not mem.closed and mem.read_u64(0) == 0  # still usable
    del view
    mem.close()
    assert mem.closed
    mem.close()  # idempotent


def test_shared_ram_walker(tmp_path: Path) -> None:
    """The walker over a real mmapped file with tables in both RAM regions."""
    small = RamLayout([(0, 2 * MiB, 0), (4 * GiB, 2 * MiB, 2 * MiB)])  # a scaled-down pc/q35 split
    path = make_ram_file(tmp_path, small)
    with SharedRamMemory(path, small) as mem:
        b = PageTableBuilder(mem, 5, 4 * GiB, 4 * GiB + 2 * MiB)  # tables above 4 GiB
        b.add_self_map()
        b.map_range(0xFFFF800000000000, 0, 16 * SIZE_2M, size=SIZE_2M, flags=PTE_P | PTE_RW | PTE_NX)
        for i in range(300):
            b.map(0x400000 + i * 4096, (0x1000 + 7 * i) << 12)
        mode = PagingMode(levels=5, nxe=True)
        vas = [0xFFFF800000000000 + k * 0x12345 for k in range(500)] + [
            0x400000 + k * 0x800 for k in range(620)
        ]
        r = translate_many(mem, b.cr3, vas, mode)
        for i, va in enumerate(vas):
            w = walk(mem, b.cr3, va, mode)
            assert (int(r.stop[i]), int(r.level[i]), int(r.pa[i])) == (int(w.stop), w.level, w.pa or 0)
        assert walk(mem, b.cr3, 0x400000 + 5 * 4096 + 3, mode).pa == ((0x1000 + 35) << 12) + 3
        s = snapshot(mem, b.cr3, mode)
        assert len(s.recursive_slots) == 1 and s.leaf_count == 16 + 300
        del r


# --------------------------------------------------------------------------------------------------
# MonitorMemory against a fake monitor


class FakeMonitor:
    """Answers HMP ``xp /Nxg`` and QMP ``pmemsave`` from a BufferMemory, like QEMU 7.2 would."""

    def __init__(self, memory: BufferMemory, scratch_dir: Path) -> None:
        self.memory = memory
        self.scratch_dir = scratch_dir
        self.hmp_calls: list[str] = []
        self.qmp_calls: list[tuple[str, dict[str, object]]] = []
        self.break_xp = False
        self.short_pmemsave = False

    def hmp(self, command_line: str) -> str:
        self.hmp_calls.append(command_line)
        m = re.fullmatch(r"xp /(\d+)xg (0x[0-9a-f]+)", command_line)
        assert m, command_line
        count, addr = int(m.group(1)), int(m.group(2), 16)
        if self.break_xp:
            return f"{addr:016x}: Cannot access memory\n"
        lines = []
        for i in range(0, count, 2):
            words = [self.memory.read_u64(addr + 8 * (i + k)) for k in range(min(2, count - i))]
            lines.append(f"{addr + 8 * i:016x}:" + "".join(f" 0x{w:016x}" for w in words))
        return "\r\n".join(lines) + "\r\n"

    def command(self, name: str, **arguments: object) -> object:
        self.qmp_calls.append((name, arguments))
        assert name == "pmemsave"
        val, size, filename = arguments["val"], arguments["size"], arguments["filename"]
        assert isinstance(val, int) and isinstance(size, int) and isinstance(filename, str)
        assert -(1 << 63) <= val < (1 << 63)
        data = self.memory.read(val, size)
        Path(filename).write_bytes(data[: size // 2] if self.short_pmemsave else data)
        return {}


@pytest.fixture
def fake(tmp_path: Path) -> FakeMonitor:
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    mem = BufferMemory(1 * MiB)
    mem.write(0, bytes(range(256)) * 4096)
    return FakeMonitor(mem, scratch)


def test_monitor_small_reads_use_xp(fake: FakeMonitor) -> None:
    mon = MonitorMemory(fake)
    assert mon.read_u64(0x100) == int.from_bytes(bytes(range(8)), "little")
    assert fake.hmp_calls == ["xp /1xg 0x100"]
    assert mon.read(0x103, 10) == bytes(range(3, 13))  # unaligned: widened to 2 words, then sliced
    assert fake.hmp_calls[-1] == "xp /2xg 0x100"
    assert mon.read(0x1000, 512) == fake.memory.read(0x1000, 512)
    assert fake.hmp_calls[-1] == "xp /64xg 0x1000"
    assert fake.qmp_calls == []
    assert mon.read(0x10, 0) == b""


def test_monitor_large_reads_use_pmemsave(fake: FakeMonitor) -> None:
    mon = MonitorMemory(fake, xp_threshold=512)
    data = mon.read(0x2001, 4096)
    assert data == fake.memory.read(0x2001, 4096)
    assert fake.hmp_calls == []
    name, args = fake.qmp_calls[0]
    assert name == "pmemsave" and args["val"] == 0x2001 and args["size"] == 4096
    assert Path(str(args["filename"])).parent == fake.scratch_dir
    assert list(fake.scratch_dir.iterdir()) == []  # the scratch file is removed


def test_monitor_errors(fake: FakeMonitor) -> None:
    layout = RamLayout.identity(1 * MiB)
    mon = MonitorMemory(fake, layout)
    with pytest.raises(MemoryAccessError, match="not inside guest RAM"):
        mon.read(1 * MiB - 4, 8)
    assert fake.hmp_calls == [] and fake.qmp_calls == []
    with pytest.raises(MemoryAccessError, match="read-only"):
        mon.write(0, b"x")
    fake.break_xp = True
    with pytest.raises(MemoryAccessError, match="Cannot access memory"):
        mon.read_u64(0)
    fake.short_pmemsave = True
    with pytest.raises(MemoryAccessError, match="wrote 2048 bytes"):
        mon.read(0, 4096)
    assert list(fake.scratch_dir.iterdir()) == []
    with pytest.raises(MemoryAccessError):
        mon.read(-8, 8)


def test_monitor_xp_wrong_address_rejected(fake: FakeMonitor) -> None:
    class Shifted(FakeMonitor):
        def hmp(self, command_line: str) -> str:
            return super().hmp(command_line).replace("0000000000000100:", "0000000000000108:")

    mon = MonitorMemory(Shifted(fake.memory, fake.scratch_dir))
    with pytest.raises(MemoryAccessError, match="expected"):
        mon.read_u64(0x100)


def test_monitor_memory_walks_like_buffer(tmp_path: Path) -> None:
    sp = synthetic_address_space(4, ram_size=4 * MiB)
    fake = FakeMonitor(sp.memory, tmp_path)
    mon = MonitorMemory(fake, sp.memory.layout)
    vas = sp.random_vas(40, seed=2).tolist()
    for va in vas:
        assert walk(mon, sp.cr3, va, sp.mode) == walk(sp.memory, sp.cr3, va, sp.mode)
    r = translate_many(mon, sp.cr3, vas, sp.mode)
    assert r.pa.tolist() == translate_many(sp.memory, sp.cr3, vas, sp.mode).pa.tolist()
    fake.hmp_calls.clear()
    assert snapshot(mon, sp.cr3, sp.mode) == snapshot(sp.memory, sp.cr3, sp.mode)
    assert fake.hmp_calls == []  # whole tables come through pmemsave


def test_to_s64_for_qmp() -> None:
    assert to_s64(0xFFFFF80000000000) == 0xFFFFF80000000000 - (1 << 64)
    assert to_s64(0x1000) == 0x1000
    assert to_s64(-5) == -5
    with pytest.raises(ValueError):
        to_s64(1 << 64)


# --------------------------------------------------------------------------------------------------
# PageCache and the batch walker over the monitor


def test_page_cache_reads_each_page_once_in_runs(fake: FakeMonitor) -> None:
    mon = MonitorMemory(fake, RamLayout.identity(1 * MiB))
    cache = PageCache(mon)
    cache.prefetch([1, 2, 3, 7, 2])
    assert [args["val"] for _, args in fake.qmp_calls] == [0x1000, 0x7000]  # pages 1-3 in one pmemsave
    assert [args["size"] for _, args in fake.qmp_calls] == [0x3000, 0x1000]
    assert cache.read(0x1FFC, 8) == fake.memory.read(0x1FFC, 8)  # crosses pages 1 and 2: cached
    assert cache.read_u64(0x3008) == fake.memory.read_u64(0x3008)
    assert cache.read_u64(0x7003) == fake.memory.read_u64(0x7003)  # unaligned
    assert len(fake.qmp_calls) == 2 and fake.hmp_calls == [] and cache.pages_cached == 4
    assert cache.read(0x5000, 0) == b""
    with pytest.raises(MemoryAccessError, match="read-only"):
        cache.write(0x1000, b"x")


def test_page_cache_remembers_unreadable_pages(fake: FakeMonitor) -> None:
    mon = MonitorMemory(fake, RamLayout.identity(1 * MiB))
    cache = PageCache(mon)
    last = (1 * MiB >> 12) - 1
    cache.prefetch([last, last + 1])  # the run fails as a whole, then page by page
    assert cache.page(last).tobytes() == fake.memory.read(last << 12, 4096)
    fetches = cache.fetches
    for _ in range(2):
        with pytest.raises(MemoryAccessError):
            cache.page(last + 1)
    assert cache.fetches == fetches, "an unreadable page is not asked for again"
    with pytest.raises(MemoryAccessError):
        cache.read(-8, 8)


@pytest.mark.parametrize("levels", [4, 5])
def test_batch_walk_over_the_monitor_reads_each_table_once(tmp_path: Path, levels: int) -> None:
    sp = synthetic_address_space(levels, ram_size=4 * MiB)
    fake = FakeMonitor(sp.memory, tmp_path)
    mon = MonitorMemory(fake, sp.memory.layout)
    vas = sp.random_vas(20000, seed=4)
    want = translate_many(sp.memory, sp.cr3, vas, sp.mode, with_attributes=True)
    got = translate_many(mon, sp.cr3, vas, sp.mode, with_attributes=True)
    for a, b in zip(want, got, strict=True):
        assert a is not None and b is not None and np.array_equal(a, b)
    tables = snapshot(sp.memory, sp.cr3, sp.mode).tables_read
    assert fake.hmp_calls == [] and len(fake.qmp_calls) <= tables, "one pmemsave per run of table pages"
    cache = PageCache(mon)
    translate_many(cache, sp.cr3, vas[:100], sp.mode)
    calls = len(fake.qmp_calls)
    translate_many(cache, sp.cr3, vas[:100], sp.mode)
    assert len(fake.qmp_calls) == calls, "a shared cache serves the second batch"


def test_shared_ram_from_an_unlinked_file_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(bytes(range(256)) * 64)
    fd = os.open(path, os.O_RDWR)
    path.unlink()  # as harness/machine.py does before QEMU starts
    mem = SharedRamMemory(fd, RamLayout.identity(16384))
    os.close(fd)  # the mapping holds its own reference
    assert mem.read(0x100, 4) == bytes(range(4))
    mem.write(0x2000, b"\xaa\xbb")
    assert mem.read_u64(0x2000) & 0xFFFF == 0xBBAA
    assert str(mem.path) == f"/proc/self/fd/{fd}"
    mem.close()


def test_monitor_without_pmemsave_reads_through_xp_only(fake: FakeMonitor) -> None:
    mon = MonitorMemory(fake, RamLayout.identity(1 * MiB), pmemsave=False, xp_chunk=4096)
    assert mon.read(0x1003, 10000) == fake.memory.read(0x1003, 10000)
    assert fake.qmp_calls == []
    assert fake.hmp_calls == ["xp /512xg 0x1000", "xp /512xg 0x2000", "xp /227xg 0x3000"]
    with pytest.raises(ValueError):
        MonitorMemory(fake, xp_chunk=12)


class _CountingFile:
    """A RAM file read from afar: counts the round trips (read_at and read_many_at each cost one)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.round_trips = 0

    def read_at(self, offset: int, size: int) -> bytes:
        self.round_trips += 1
        return self.data[offset : offset + size]

    def read_many_at(self, spans: list[tuple[int, int]]) -> list[bytes]:
        self.round_trips += 1
        return [self.data[o : o + n] for o, n in spans]

    def write_at(self, offset: int, data: bytes) -> None:
        self.round_trips += 1
        self.data = self.data[:offset] + data + self.data[offset + len(data) :]


def test_remote_ram_reads_and_writes_through_the_layout() -> None:
    layout = RamLayout([(0, 0x2000, 0), (0x100000000, 0x1000, 0x2000)])
    raw = bytes(range(256)) * 48
    file = _CountingFile(raw)
    memory = RemoteRamMemory(file, layout)
    assert memory.read(0x1FF8, 8) == raw[0x1FF8:0x2000]
    assert memory.read(0x100000010, 4) == raw[0x2010:0x2014]
    assert memory.read_u64(0x10) == int.from_bytes(raw[0x10:0x18], "little")
    with pytest.raises(MemoryAccessError, match="not inside guest RAM"):
        memory.read(0x3000, 8)
    memory.write_u64(0x100000008, 0x1122334455667788)
    assert file.data[0x2008:0x2010] == (0x1122334455667788).to_bytes(8, "little")
    assert memory.read_u64(0x100000008) == 0x1122334455667788
    with pytest.raises(MemoryAccessError, match="not inside guest RAM"):
        memory.write(0x1FFC, b"12345678")


def test_page_cache_fetches_every_run_of_a_level_in_one_remote_round_trip() -> None:
    raw = bytes(range(256)) * (16 * 4096 // 256)
    remote = _CountingFile(raw)
    cache = PageCache(RemoteRamMemory(remote, RamLayout.identity(len(raw))))
    cache.prefetch([1, 2, 3, 7, 9, 10])  # three runs of consecutive frames
    assert remote.round_trips == 1
    assert cache.read(0x2000, 16) == raw[0x2000:0x2010] and cache.read(0x9FF8, 16) == raw[0x9FF8:0xA008]
    assert remote.round_trips == 1, "every page read afterwards came from the cache"
    results = RemoteRamMemory(remote, RamLayout.identity(len(raw))).read_many([(0, 8), (len(raw), 8)])
    assert results[0] == raw[:8] and isinstance(results[1], MemoryAccessError)
