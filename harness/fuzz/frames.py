"""The frame fuzzer's pure half: cases to send, and the answers docs/agent-protocol.md says they get.

A case is one request frame (sometimes a few lines, a mailbox batch, or stray doorbell bytes), made
from a well-formed request of any command by zero or more mutations: truncation, oversize, bytes
outside 0x20..0x7E, invalid UTF-8, bad ids, values of the wrong type or spelling, unknown commands,
wrong counts, odd spacing, protocol-like keys. `expect_request` is the protocol page's "Framing"
section as a function; it never looks at how a case was made, only at its bytes.

Case `index` of seed `seed` is a pure function of (seed, index), so any one case replays alone.
A case is never sent if the model says it would run a command with side effects (a DDI that
allocates, frees, writes or changes the IRQL): the frame fuzzer tests the protocol layer, and the
DDI fuzzer (harness.fuzz.model) owns what DDIs do.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from harness.agent.codec import MAX_ID, MAX_REQUEST_BYTES
from harness.agent.mailbox import DOORBELL_REQUEST, DOORBELL_RESPONSE, REQUEST_AREA

COM2 = "COM2"
MAILBOX = "mailbox"
OK = "ok"
MALFORMED = "malformed"
OVERSIZED = "oversized"
UNKNOWN_COMMAND = "unknown-command"
BAD_ARGUMENT = "bad-argument"
ERROR_KINDS = (MALFORMED, OVERSIZED, UNKNOWN_COMMAND, BAD_ARGUMENT)

LINE_MAX = MAX_REQUEST_BYTES - 1  # a request's bytes without its newline
MAILBOX_REQUEST_MAX = REQUEST_AREA  # a mailbox request: one line or a batch ("Mailbox", request_capacity)
# What the answers of one mailbox request may add up to, by `answer_bound`: the rest would spill to
# COM2 and arrive out of the agent's order (the response area is 0x40000 bytes).
MAILBOX_ANSWER_BUDGET = 0x30000
VALUES_MAX = 8
ULONG_MAX = 0xFFFF_FFFF
RAW_ACCESS_MAX = 4096
# Ids the runner keeps for itself (its resynchronising hellos); the generator never uses them.
RESERVED_IDS = range(4_000_000_000, 4_000_001_000)

# Every command the agent registers (AGENT_COMMAND in driver_src/agent/*.c), with its signature:
# one letter per value, i integer, b bytes. tests/unit/test_fuzz_frames_model.py checks it against the
# sources.
AGENT_COMMANDS: dict[str, str] = {
    "ping": "", "hello": "", "quiet_ticks": "", "boot_phases": "", "boot_report": "", "kernel_info": "",
    "frame_stats": "", "outstanding": "", "copy_pte_va": "", "KeGetCurrentIrql": "", "user_page_allocate": "",
    "MmGetPhysicalAddress": "i", "MmIsAddressValid": "i", "MmGetVirtualForPhysical": "i",
    "read_va": "ii", "write_va": "ib", "KeRaiseIrql": "i", "KeLowerIrql": "i",
    "ExAllocatePoolWithTag": "iii", "ExAllocatePool2": "iii", "ExFreePoolWithTag": "ii", "ExFreePool": "i",
    "MmCopyMemory": "iiii",
    "IoAllocateMdl": "iiiii", "IoFreeMdl": "i", "MmInitializeMdl": "iii", "MmSizeOfMdl": "ii",
    "MmGetMdlPfnArray": "i", "MmBuildMdlForNonPagedPool": "i", "MmProbeAndLockPages": "iii",
    "MmUnlockPages": "i", "MmAllocatePagesForMdlEx": "iiiiii", "MmAllocatePagesForMdl": "iiii",
    "MmFreePagesFromMdl": "i", "MmMapLockedPagesSpecifyCache": "iiiiii", "MmMapLockedPages": "ii",
    "MmUnmapLockedPages": "ii", "MmGetSystemAddressForMdlSafe": "ii", "IoBuildPartialMdl": "iiii",
    "MmPrepareMdlForReuse": "i",
    "MmAllocateMappingAddress": "ii", "MmAllocateMappingAddressEx": "iii", "MmFreeMappingAddress": "ii",
    "MmMapLockedPagesWithReservedMapping": "iiii", "MmUnmapReservedMapping": "iii",
    "test_hook_set_pte_no_flush": "ii",
    "MmMapIoSpace": "iii", "MmMapIoSpaceEx": "iii", "MmUnmapIoSpace": "ii", "READ_REGISTER_ULONG": "i",
    "WRITE_REGISTER_ULONG": "ii",
    "MmAllocateContiguousMemory": "ii", "MmAllocateContiguousMemorySpecifyCache": "iiiii",
    "MmAllocateContiguousMemorySpecifyCacheNode": "iiiiii", "MmFreeContiguousMemory": "i",
    "MmFreeContiguousMemorySpecifyCache": "iii",
    "DxgkCbCreatePhysicalMemoryObject": "iiiiiiii", "DxgkCbMapPhysicalMemory": "iiii",
    "DxgkCbUnmapPhysicalMemory": "iii", "DxgkCbDestroyPhysicalMemoryObject": "ii",
    "DxgkCbOpenPhysicalMemoryObject": "ii", "DxgkCbClosePhysicalMemoryObject": "i", "dxgk_object_info": "i",
    "user_page_free": "i", "user_probe": "iii", "user_kernel_access": "iiii", "user_kernel_execute": "i",
    "access_probe_setup": "", "access_probe_batch": "b", "access_probe_release": "",
    "read_va_nofault": "ii", "cpu_info": "", "smp_stress": "iii", "smp_stress_release": "",
    "test_hook_skip_shootdown": "i", "test_hook_invlpg": "i",
    "test_hook_hang": "", "test_hook_triple_fault": "", "test_hook_console_garbage": "ii",
    "test_hook_agent_garbage": "ii",
}

# Commands a case may run to completion: for any values of the right types they only read, and
# their answer carries these keys.
# (`boot_report` only reads too, but prints the whole report on the console: not per case.)
HARMLESS_COMMANDS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "hello": ("proto", "build", "paging", "mailbox"),
    "quiet_ticks": ("quiet_ticks",),
    "boot_phases": ("phases", "tsc"),
    "kernel_info": ("levels", "cr3", "text_start"),
    "frame_stats": ("total", "free"),
    "outstanding": ("irql",),
    "copy_pte_va": ("va",),
    "KeGetCurrentIrql": ("irql",),
    "cpu_info": ("cpu", "cpus", "online", "cr3"),
    "MmGetPhysicalAddress": ("pa",),
    "MmIsAddressValid": ("valid",),
    "MmGetVirtualForPhysical": ("va",),
    "MmSizeOfMdl": ("size",),
    "read_va": ("data",),  # only on kernel text: generated so, and checked by `is_harmless`
}

Value = int | bool | str | bytes


def _fits_ulong(*positions: int) -> Callable[[list[Value]], bool]:
    def out_of_range(values: list[Value]) -> bool:
        return any(isinstance(values[p], int) and int(values[p]) > ULONG_MAX for p in positions)
    return out_of_range


def _raw_length_out_of_range(values: list[Value]) -> bool:
    length = len(values[1]) if isinstance(values[1], bytes) else int(values[1])
    return not 1 <= length <= RAW_ACCESS_MAX


# Values out of a command's documented range: answered `bad-argument` before the command runs.
# From docs/agent-protocol.md (read_va, write_va), docs/ddi/pool.md ("pool_type and tag must fit a
# ULONG"), docs/ddi/reserved-mappings.md ("a tag above 0xFFFFFFFF (and flags above it)"),
# docs/ddi/iospace-contiguous.md ("cache_type and protect must fit a ULONG"; registers "4-byte
# aligned") and reserved-mappings.md (the test hook "refuses any VA outside the region").
OUT_OF_RANGE: dict[str, Callable[[list[Value]], bool]] = {
    "read_va": _raw_length_out_of_range,
    "write_va": _raw_length_out_of_range,
    "ExAllocatePoolWithTag": _fits_ulong(0, 2),
    "ExAllocatePool2": _fits_ulong(2),
    "ExFreePoolWithTag": _fits_ulong(1),
    "MmAllocateMappingAddress": _fits_ulong(1),
    "MmAllocateMappingAddressEx": _fits_ulong(1, 2),
    "MmFreeMappingAddress": _fits_ulong(1),
    "MmMapLockedPagesWithReservedMapping": _fits_ulong(1),
    "MmUnmapReservedMapping": _fits_ulong(1),
    "MmMapIoSpace": _fits_ulong(2),
    "MmMapIoSpaceEx": _fits_ulong(2),
    "MmAllocateContiguousMemorySpecifyCache": _fits_ulong(4),
    "MmFreeContiguousMemorySpecifyCache": _fits_ulong(2),
    "READ_REGISTER_ULONG": lambda v: int(v[0]) % 4 != 0,
    "test_hook_set_pte_no_flush": lambda v: int(v[0]) >> 63 == 0,  # the user half: never the region
}


@dataclass(frozen=True)
class Expected:
    """The one answer a frame must get: its id (None for `=?`) and `ok` or the error kind."""

    request_id: int | None
    kind: str
    command: str = ""  # for `ok`: the command that ran
    values: tuple[Value, ...] = ()  # for `ok`: its values

    def describe(self) -> str:
        rid = "?" if self.request_id is None else str(self.request_id)
        return f"={rid} {self.kind}" + (f" ({self.command})" if self.command else "")


@dataclass(frozen=True)
class Send:
    channel: str  # COM2: raw bytes as they go on the line; MAILBOX: one request (a line or a batch)
    data: bytes


@dataclass(frozen=True)
class FrameCase:
    seed: int
    index: int
    label: str  # how the generator made it: "valid", "truncated", "bad id", ...
    sends: tuple[Send, ...]
    answers: tuple[tuple[Expected, ...], ...]  # the answers each send gets, in the agent's order

    @property
    def expected(self) -> tuple[Expected, ...]:
        return tuple(answer for per_send in self.answers for answer in per_send)

    def frames(self, channel: str) -> int:
        """Request frames this case puts on a channel: COM2 lines, or mailbox requests."""
        if channel == COM2:
            return sum(s.data.count(b"\n") for s in self.sends if s.channel == COM2)
        return sum(1 for s in self.sends if s.channel == MAILBOX)

    def mailbox_lines(self) -> int:
        """The lines of this case's mailbox requests: the agent answers each one."""
        return sum(len(a) for s, a in zip(self.sends, self.answers, strict=True) if s.channel == MAILBOX)

    def answer_channels(self) -> list[str]:
        """The channel each expected answer answers a frame of, in the order of `expected`."""
        return [s.channel for s, a in zip(self.sends, self.answers, strict=True) for _ in a]

    def describe(self, limit: int = 160) -> str:
        parts = []
        for s in self.sends:
            shown = s.data[:limit]
            more = f"... ({len(s.data)} bytes)" if len(s.data) > limit else ""
            parts.append(f"{s.channel} {shown!r}{more}")
        return " + ".join(parts)


# -- the protocol page as a function ------------------------------------------------------------

_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}\Z")
_DEC = re.compile(r"[0-9]{1,20}\Z")
_BYTES = re.compile(r"#(?:[0-9a-fA-F]{2})*\Z")
_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\x[0-9a-fA-F]{2})*"\Z')
_ID = re.compile(r"[0-9]{1,10}\Z")


def parse_value(token: str) -> Value | None:
    """A request value by its spelling ("Values"), or None when it does not parse."""
    if token in ("true", "false"):
        return token == "true"
    if _HEX.match(token):
        return int(token, 16)
    if _DEC.match(token):
        number = int(token)
        return number if number < 1 << 64 else None
    if _BYTES.match(token):
        return bytes.fromhex(token[1:])
    if _STRING.match(token):
        return token
    return None


def parse_id(token: str) -> int | None:
    """A request id: decimal, 1 to 4294967295. [reading] At most ten digits, leading zeros allowed."""
    if not _ID.match(token):
        return None
    number = int(token)
    return number if 1 <= number <= MAX_ID else None


def split_tokens(rest: str) -> list[str] | None:
    """The tokens after `<id> `, separated by single spaces; a string runs to its closing quote and
    ends its token. None when a token is empty (doubled or trailing space) or a string is cut."""
    tokens: list[str] = []
    pos, n = 0, len(rest)
    while True:
        start = pos
        if pos < n and rest[pos] == '"':
            close = rest.find('"', pos + 1)
            if close < 0:
                return None
            end = close + 1
        else:
            space = rest.find(" ", pos)
            end = n if space < 0 else space
        if end == start or (end < n and rest[end] != " "):
            return None
        tokens.append(rest[start:end])
        if end == n:
            return tokens
        pos = end + 1


def signature_of(values: list[Value]) -> str:
    return "".join("b" if isinstance(v, bytes) else "i" if isinstance(v, int) and not isinstance(v, bool)
                   else "?" for v in values)


def expect_request(text: bytes) -> Expected:
    """The answer to one request's text (no newline), by docs/agent-protocol.md "Framing": the first
    of oversized, malformed, unknown-command, bad-argument that applies, else ok."""
    if len(text) > LINE_MAX:
        return Expected(None, OVERSIZED)
    head = text.split(b" ", 1)[0]
    request_id = parse_id(head.decode("latin-1"))
    if any(b < 0x20 or b > 0x7E for b in text):
        return Expected(request_id, MALFORMED)
    if request_id is None:
        return Expected(None, MALFORMED)
    line = text.decode("ascii")
    if " " not in line:
        return Expected(request_id, MALFORMED)  # no command
    tokens = split_tokens(line.split(" ", 1)[1])
    if tokens is None:
        return Expected(request_id, MALFORMED)
    command, raw_values = tokens[0], tokens[1:]
    values = [parse_value(t) for t in raw_values]
    if any(v is None for v in values):
        return Expected(request_id, MALFORMED)
    parsed = [v for v in values if v is not None]
    signature = AGENT_COMMANDS.get(command)
    if signature is None:
        return Expected(request_id, UNKNOWN_COMMAND)
    if signature_of(parsed) != signature:
        return Expected(request_id, BAD_ARGUMENT)
    out_of_range = OUT_OF_RANGE.get(command)
    if out_of_range is not None and out_of_range(parsed):
        return Expected(request_id, BAD_ARGUMENT)
    return Expected(request_id, OK, command, tuple(parsed))


def expect_line(line: bytes) -> Expected:
    """One line, its newline excluded, as both channels take it: longer than the limit (a `\\r`
    included) is `=? oversized`; a `\\r` at its end is ignored."""
    if len(line) > LINE_MAX:
        return Expected(None, OVERSIZED)
    return expect_request(line[:-1] if line.endswith(b"\r") else line)


def expect_com2(data: bytes) -> list[Expected]:
    """One answer per line of COM2 bytes, in order (the agent discards an oversized line to its
    newline)."""
    lines = com2_as_read(data).split(b"\n")
    if lines[-1]:
        raise ValueError(f"COM2 data must end with a newline: {data[-40:]!r}")
    return [expect_line(line) for line in lines[:-1]]


def expect_mailbox(request: bytes) -> list[Expected]:
    """The answers to one mailbox request ("Mailbox", step 2): longer than the request area, one
    `=? oversized`; else one answer per line, the lines separated by `\\n`, a final `\\n` optional,
    and an empty request one empty line."""
    if len(request) > MAILBOX_REQUEST_MAX:
        return [Expected(None, OVERSIZED)]
    lines = request.split(b"\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return [expect_line(line) for line in lines]


# -- doorbells: the only code that knows the mailbox's COM2 bytes -------------------------------


def com2_as_read(data: bytes) -> bytes:
    """COM2 bytes as the agent's line reader takes them.

    Protocol 3 ("Mailbox"): 0x07 at the start of a line is a doorbell, never part of the line (it
    wakes the agent, or is dropped when it announces nothing); anywhere inside a line it is an
    ordinary byte, and so is 0x06 everywhere, both then making their line malformed.
    """
    return b"\n".join(line.lstrip(DOORBELL_REQUEST) for line in data.split(b"\n"))


def doorbell_sends(rng: random.Random, requests: list[bytes]) -> tuple[Send, ...]:
    """Doorbell bytes where they do not belong, as one case (protocol 3), from a few harmless requests:

    - doorbell bytes inside a COM2 line, or at its start (dropped);
    - a mailbox request, then a COM2 line after a late ring or two that announce nothing (dropped);
    - a lone doorbell line;
    - several COM2 lines in one write, some after rings;
    - rings at the start of a mailbox batch's lines, where they are ordinary bytes.
    """
    ring, answer = DOORBELL_REQUEST, bytes([DOORBELL_RESPONSE])
    first = requests[0]
    shape = rng.randrange(5)
    if shape == 0:
        pos = rng.randrange(len(first) + 1)
        return (Send(COM2, first[:pos] + rng.choice([ring, answer, ring * 2]) + first[pos:] + b"\n"),)
    if shape == 1:
        return (Send(MAILBOX, first), Send(COM2, ring * rng.randint(1, 3) + requests[1] + b"\n"))
    if shape == 2:
        return (Send(COM2, rng.choice([ring, answer, ring * 3]) + b"\n"),)
    lines = [ring * rng.choice((0, 0, 1, 2)) + r for r in requests]
    if shape == 3:
        return (Send(COM2, b"\n".join(lines) + b"\n"),)
    return (Send(MAILBOX, b"\n".join(lines)),)


def expected_answers(sends: tuple[Send, ...]) -> tuple[tuple[Expected, ...], ...]:
    """The answers to each of a case's sends, in the order the agent gives them."""
    return tuple(tuple(expect_com2(s.data) if s.channel == COM2 else expect_mailbox(s.data)) for s in sends)


# Bytes an answer takes at most, for the mailbox's budget: `ok` by command (read_va by its length),
# an error by its kind's longest message in driver_src/agent (an unknown command's name is cut to 64
# bytes; a bad argument's message is the command's usage).
_OK_BOUND = {"ping": 24, "KeGetCurrentIrql": 32, "hello": 2048, "kernel_info": 1024, "outstanding": 2048,
             "boot_phases": 512, "frame_stats": 256}
_OTHER_BOUND = 128
_ERROR_BOUND = {MALFORMED: 128, OVERSIZED: 128, UNKNOWN_COMMAND: 192, BAD_ARGUMENT: 320}


def answer_bound(expected: Expected) -> int:
    if expected.kind != OK:
        return _ERROR_BOUND[expected.kind]
    if expected.command == "read_va":
        return 2 * int(expected.values[1]) + _OTHER_BOUND
    return _OK_BOUND.get(expected.command, _OTHER_BOUND)


# -- the generator ------------------------------------------------------------------------------

_EDGE_INTEGERS = (0, 1, 2, 0xFF, 0x1000, 0xFFF, ULONG_MAX, ULONG_MAX + 1, (1 << 63) - 1, 1 << 63,
                  (1 << 64) - 1, 0xFFFF_F800_0000_0000, 0xFFFF_8800_0000_0000, 0x0000_8000_0000_0000,
                  0xFEE0_0000, 0xFEC0_0000)
_BAD_IDS = (b"0", b"00", b"4294967296", b"18446744073709551616", b"99999999999", b"00000000001", b"-1", b"+1",
            b"0x10", b"1a", b"1.0", b"", b" 1", b"\xd9\xa3", b"=1", b"!1")  # \xd9\xa3: ARABIC-INDIC DIGIT THREE
_BAD_VALUES = ("0x", "0x" + "f" * 17, "1" * 21, "18446744073709551616", "#abc", "#zz", '"abc', '"a\\qb"',
               '"a\\x4"', "abc\"", "-5", "1e5", "0X10", "TRUE", "0xg", "=", "proto=2", "key=0x1", "\"\"x",
               "0x-1", "#-1", "nan")
_INVALID_UTF8 = (b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28", b"\xc0\xaf", b"\xed\xa0\x80",
                 b"\xff", b"\xfe\xff", b"\x80", b"\xf8\x88\x80\x80\x80")
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class FrameGenerator:
    """Case `index` of `seed`: `case(index)`. `text` is [start, end) of kernel text (read_va's target);
    without a mailbox every case goes to COM2."""

    def __init__(self, seed: int, *, text: tuple[int, int], mailbox: bool) -> None:
        self.seed = seed
        self.text = text
        self.mailbox = mailbox
        self._commands = sorted(AGENT_COMMANDS)

    def case(self, index: int) -> FrameCase:
        rng = random.Random(f"mmhil-fuzz-frames:{self.seed}:{index}")
        while True:  # redraw (from the same stream, so still a function of seed and index) until harmless
            label, sends = self._draw(rng)
            answers = expected_answers(sends)
            if all(self.is_harmless(e) for a in answers for e in a) and all(
                    sum(map(answer_bound, a)) <= MAILBOX_ANSWER_BUDGET
                    for s, a in zip(sends, answers, strict=True) if s.channel == MAILBOX):
                return FrameCase(self.seed, index, label, sends, answers)

    def is_harmless(self, expected: Expected) -> bool:
        """An answer the fuzzer may provoke: any error, or `ok` from a command that only reads."""
        if expected.kind != OK:
            return True
        if expected.command not in HARMLESS_COMMANDS:
            return False
        if expected.command == "read_va":
            va, length = (int(v) for v in expected.values)
            return self.text[0] <= va and va + length <= self.text[1]
        return True

    # -- drawing ---------------------------------------------------------------------------------

    def _channel(self, rng: random.Random) -> str:
        return MAILBOX if self.mailbox and rng.random() < 0.5 else COM2

    def _draw(self, rng: random.Random) -> tuple[str, tuple[Send, ...]]:
        roll = rng.random()
        if self.mailbox and roll < 0.04:
            requests = [self._request(rng, harmless=True) for _ in range(rng.randint(2, 4))]
            return "doorbell", doorbell_sends(rng, requests)
        if self.mailbox and roll < 0.10:
            return self._batch(rng)
        channel = self._channel(rng)
        label, text = self._line(rng, channel)
        if channel == MAILBOX:
            return label, (Send(MAILBOX, text),)
        if rng.random() < 0.05:  # \r\n line ending, which the agent ignores
            text += b"\r"
        if rng.random() < 0.03:  # two lines in one write
            label += "+second line"
            text += b"\n" + self._request(rng, harmless=True)
        return label, (Send(COM2, text + b"\n"),)

    def _line(self, rng: random.Random, channel: str) -> tuple[str, bytes]:
        """One request line, valid or not: its label and its bytes, without a newline."""
        roll = rng.random()
        if roll < 0.32:
            return "valid", self._request(rng, harmless=True)
        if roll < 0.36:
            return "garbage", bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        if roll < 0.38:
            return "empty", b""
        text = self._request(rng, harmless=rng.random() < 0.5)
        labels = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            name, mutate = rng.choice(self._mutations(channel))
            text = mutate(rng, text)
            labels.append(name)
        return "+".join(labels), text

    def _batch(self, rng: random.Random) -> tuple[str, tuple[Send, ...]]:
        """A mailbox request of several lines: a few of any kind, or the request area filled to
        exactly its capacity, or just past it (then the whole request is one `=? oversized`)."""
        roll = rng.random()
        if roll < 0.9:
            lines = [self._line(rng, MAILBOX)[1] for _ in range(rng.randint(2, 12))]
            ending = rng.choice((b"", b"", b"\n", b"\r\n", b"\n\n"))
            return "batch", (Send(MAILBOX, b"\n".join(lines) + ending),)
        size = MAILBOX_REQUEST_MAX + (0 if roll < 0.95 else rng.choice((1, 2, 4096)))
        label = "full batch" if size == MAILBOX_REQUEST_MAX else "batch past the request area"
        lines = []
        total = -1
        while total < size:  # short lines with short answers, so that the answers fit the response area
            roll = rng.random()
            command = "ping" if roll < 0.92 else "KeGetCurrentIrql"
            line = self._request(rng, harmless=True, command=command)
            lines.append(_spacing(rng, line) if roll > 0.98 else line)
            total += len(line) + 1
        request = b"\n".join(lines)
        return label, (Send(MAILBOX, (request + b" " * size)[:size]),)

    def _id(self, rng: random.Random) -> str:
        roll = rng.random()
        if roll < 0.05:
            return str(MAX_ID)
        if roll < 0.08:
            return "1"
        if roll < 0.10:
            return f"{rng.randint(1, 99):010d}"  # ten digits with leading zeros: still an id
        while True:
            request_id = rng.randint(1, MAX_ID)
            if request_id not in RESERVED_IDS:
                return str(request_id)

    def _integer(self, rng: random.Random) -> int:
        roll = rng.random()
        if roll < 0.3:
            return rng.choice(_EDGE_INTEGERS)
        if roll < 0.5:
            return rng.randint(0, 0x10000)
        if roll < 0.7:
            return rng.randint(*self.text)
        return rng.getrandbits(rng.choice((8, 16, 32, 48, 64)))

    def _spell(self, rng: random.Random, value: int) -> str:
        roll = rng.random()
        if roll < 0.55:
            return hex(value)
        if roll < 0.65:
            return "0x" + f"{value:x}".upper()
        if roll < 0.7:
            return f"0x{value:016x}"
        return str(value)

    def _bytes(self, rng: random.Random, length: int | None = None) -> str:
        n = rng.choice((0, 1, 8, 16, 100)) if length is None else length
        return "#" + bytes(rng.randrange(256) for _ in range(n)).hex()

    def _request(self, rng: random.Random, *, harmless: bool, command: str = "") -> bytes:
        """A well-formed request: of a harmless command with in-range values, or of any command with
        random values of the right types."""
        if not command:
            command = rng.choice(sorted(HARMLESS_COMMANDS)) if harmless else rng.choice(self._commands)
        values = self._values(rng, command, harmless)
        return " ".join([self._id(rng), command, *values]).encode("ascii")

    def _values(self, rng: random.Random, command: str, harmless: bool) -> list[str]:
        if command == "read_va":
            start, end = self.text
            va = rng.randrange(start, end)
            if harmless or rng.random() < 0.5:
                length = rng.randint(1, min(RAW_ACCESS_MAX, end - va))
            else:
                length = rng.choice((0, RAW_ACCESS_MAX + 1, 1 << 32, (1 << 64) - 1))
            return [self._spell(rng, va), self._spell(rng, length)]
        signature = AGENT_COMMANDS[command]
        return [self._bytes(rng) if kind == "b" else self._spell(rng, self._integer(rng)) for kind in signature]

    # -- mutations -------------------------------------------------------------------------------

    def _mutations(self, channel: str) -> list[tuple[str, Callable[[random.Random, bytes], bytes]]]:
        mutations: list[tuple[str, Callable[[random.Random, bytes], bytes]]] = [
            ("truncated", _truncate), ("stray byte", _stray_byte), ("invalid UTF-8", _invalid_utf8),
            ("bad id", _bad_id), ("wrong type", self._wrong_type), ("bad value", _bad_value),
            ("unknown command", _unknown_command), ("wrong count", self._wrong_count), ("spacing", _spacing),
            ("proto-like", _proto_like), ("carriage return", _carriage_return), ("out of range", _out_of_range),
        ]
        # A COM2 byte costs ~60 us under TCG: oversized lines go mostly to the mailbox.
        weight = 40 if channel == MAILBOX else 1
        return mutations * 40 + [("oversized", _oversize)] * weight

    def _wrong_type(self, rng: random.Random, text: bytes) -> bytes:
        tokens = text.split(b" ")
        if len(tokens) < 3:
            return text + b" " + rng.choice([b"#00", b"true", b'"x"'])
        pos = rng.randrange(2, len(tokens))
        replacement = rng.choice(["true", "false", '"a string"', '"\\x41"', self._bytes(rng), "0x1"])
        tokens[pos] = replacement.encode()
        return b" ".join(tokens)

    def _wrong_count(self, rng: random.Random, text: bytes) -> bytes:
        tokens = text.split(b" ")
        roll = rng.random()
        if roll < 0.35 and len(tokens) > 2:
            return b" ".join(tokens[:-1])
        extra = rng.randint(1, 3) if roll < 0.8 else rng.randint(VALUES_MAX - len(tokens) + 3, VALUES_MAX + 4)
        return b" ".join(tokens + [self._spell(rng, self._integer(rng)).encode() for _ in range(max(1, extra))])


def _truncate(rng: random.Random, text: bytes) -> bytes:
    return text[: rng.randrange(len(text))] if text else text


def _oversize(rng: random.Random, text: bytes) -> bytes:
    target = LINE_MAX + rng.choice((1, 2, 100, 5000))
    if rng.random() < 0.3:  # exactly at the limit: still a request
        target = LINE_MAX
    padding = b" 0x1" * ((target - len(text)) // 4 + 1)
    return (text + padding)[:target]


def _stray_byte(rng: random.Random, text: bytes) -> bytes:
    byte = bytes([rng.choice([*range(0x00, 0x20), *range(0x7F, 0x100)])])
    pos = rng.randrange(len(text) + 1)
    if rng.random() < 0.5 and text:
        return text[:pos] + byte + text[pos + 1 :]
    return text[:pos] + byte + text[pos:]


def _invalid_utf8(rng: random.Random, text: bytes) -> bytes:
    pos = rng.randrange(len(text) + 1)
    return text[:pos] + rng.choice(_INVALID_UTF8) + text[pos:]


def _bad_id(rng: random.Random, text: bytes) -> bytes:
    rest = text.split(b" ", 1)[1] if b" " in text else b"hello"
    return rng.choice(_BAD_IDS) + b" " + rest


def _bad_value(rng: random.Random, text: bytes) -> bytes:
    tokens = text.split(b" ")
    bad = rng.choice(_BAD_VALUES).encode()
    if len(tokens) < 3:
        return text + b" " + bad
    tokens[rng.randrange(2, len(tokens))] = bad
    return b" ".join(tokens)


def _unknown_command(rng: random.Random, text: bytes) -> bytes:
    tokens = text.split(b" ")
    if len(tokens) < 2:
        tokens.append(b"")
    real = tokens[1]
    choices = [
        "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(1, 40))).encode(),
        real.lower(), real.upper(), real + b"x", real[:-1], b"_" + real, b"0x10", b'"hello"', b"#00", b"hello=1",
    ]
    tokens[1] = rng.choice(choices)
    return b" ".join(tokens)


def _spacing(rng: random.Random, text: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return b" " + text
    if roll < 0.5:
        return text + b" "
    spaces = [i for i, b in enumerate(text) if b == 0x20]
    if not spaces:
        return text + b"  x"
    pos = rng.choice(spaces)
    return text[:pos] + rng.choice([b"  ", b"\t", b" \t "]) + text[pos + 1 :]


def _proto_like(rng: random.Random, text: bytes) -> bytes:
    head = text.split(b" ", 1)[0]
    tail = rng.choice([b"hello proto=3", b"hello proto=2", b"hello 3", b"hello 2", b"!hello proto=2",
                       b"hello proto=\"2\"", b"=1 ok", b"hello #02", b"kernel_info levels=5"])
    return head + b" " + tail


def _carriage_return(rng: random.Random, text: bytes) -> bytes:
    pos = rng.randrange(len(text) + 1)
    return text[:pos] + b"\r" + text[pos:]


def _out_of_range(rng: random.Random, text: bytes) -> bytes:
    """A value just past a documented range (a ULONG argument, a length), on a command that has one."""
    tokens = text.split(b" ")
    if len(tokens) < 3:
        return text
    pos = rng.randrange(2, len(tokens))
    tokens[pos] = rng.choice([hex(ULONG_MAX + 1), hex(ULONG_MAX), "0", "4097", "4096", "0x3", "1"]).encode()
    return b" ".join(tokens)
