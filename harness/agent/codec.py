"""Encoding and decoding of agent protocol frames (docs/agent-protocol.md). Pure functions, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.errors import ProtocolError

PROTOCOL_VERSION = 4
MAX_REQUEST_BYTES = 16384
MAX_ID = 0xFFFF_FFFF
UNKNOWN_ID = "?"

Value = int | bool | str | bytes

_KEY = re.compile(r"[a-z_][a-z0-9_]*\Z")
_COMMAND = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}\Z")
_DEC = re.compile(r"[0-9]{1,20}\Z")
_BYTES = re.compile(r"#(?:[0-9a-fA-F]{2})*\Z")
_PLAIN_CHARS = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}


@dataclass(frozen=True)
class Response:
    """`=<id> ok ...` or `=<id> err <kind> msg=...`; `request_id` is None for `=?`."""

    request_id: int | None
    ok: bool
    values: dict[str, Value] = field(default_factory=dict)
    error_kind: str = ""

    @property
    def error_message(self) -> str:
        message = self.values.get("msg", "")
        return message if isinstance(message, str) else repr(message)


@dataclass(frozen=True)
class Notice:
    """An unsolicited frame: `!hello ...` or `!bugcheck ...`."""

    kind: str
    values: dict[str, Value]


Frame = Response | Notice


def encode_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"integer {value} does not fit the protocol's unsigned 64 bits")
        return hex(value)
    if isinstance(value, bytes):
        return "#" + value.hex()
    return '"' + "".join(c if c in _PLAIN_CHARS else f"\\x{ord(c):02x}" for c in value) + '"'


CPU_KEY = "cpu="


def encode_request(request_id: int, command: str, *args: int | bytes, cpu: int | None = None) -> bytes:
    """`<id> [cpu=<K>] <command> [values]`: with `cpu`, the request runs on CPU K (0 is the BSP)."""
    if not 1 <= request_id <= MAX_ID:
        raise ValueError(f"request id {request_id} is outside 1..{MAX_ID}")
    if not _COMMAND.match(command):
        raise ValueError(f"{command!r} is not a command name")
    if cpu is not None and (isinstance(cpu, bool) or not 0 <= cpu <= MAX_ID):
        raise ValueError(f"cpu {cpu!r} is not a CPU index")
    target = [] if cpu is None else [f"{CPU_KEY}{cpu}"]
    line = " ".join([str(request_id), *target, command, *(encode_value(a) for a in args)]) + "\n"
    data = line.encode("ascii")
    if len(data) > MAX_REQUEST_BYTES:
        raise ValueError(f"request of {len(data)} bytes exceeds the protocol's {MAX_REQUEST_BYTES}")
    return data


def parse_cpu_token(token: str) -> int | None:
    """The K of a `cpu=<K>` token (decimal or 0x hex, as any protocol integer); None for other tokens."""
    if not token.startswith(CPU_KEY):
        return None
    spelled = token.removeprefix(CPU_KEY)
    value = decode_value(spelled) if spelled else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{token!r}: cpu= takes a CPU index")
    return value


def decode_value(token: str) -> Value:
    if token in ("true", "false"):
        return token == "true"
    if _HEX.match(token):
        return int(token, 16)
    if _DEC.match(token):
        number = int(token)
        if number >= 1 << 64:
            raise ValueError(f"integer {token} exceeds 64 bits")
        return number
    if _BYTES.match(token):
        return bytes.fromhex(token[1:])
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return _unescape(token[1:-1])
    raise ValueError(f"{token!r} is not a protocol value")


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            code = body[i + 2 : i + 4]
            if body[i + 1 : i + 2] != "x" or len(code) != 2:
                raise ValueError(f"bad escape in string {body!r}")
            out.append(chr(int(code, 16)))
            i += 4
        elif c in _PLAIN_CHARS:
            out.append(c)
            i += 1
        else:
            raise ValueError(f"character {c!r} may not appear unescaped in a string")
    return "".join(out)


def _tokens(text: str) -> list[str]:
    """Split on spaces, keeping quoted strings (which may contain spaces) whole."""
    if '"' not in text:
        return text.split()
    tokens: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == " " and not quoted:
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(c)
    if quoted:
        raise ValueError("unterminated string")
    if current:
        tokens.append("".join(current))
    return tokens


def _decode_pairs(tokens: list[str]) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep or not _KEY.match(key):
            raise ValueError(f"{token!r} is not key=value")
        if key in values:
            raise ValueError(f"key {key!r} appears twice")
        values[key] = decode_value(raw)
    return values


def decode_frame(line: bytes) -> Frame:
    """Decode one guest-to-host line (without its newline). Raises ProtocolError naming the line."""
    try:
        text = line.rstrip(b"\r").decode("ascii")
        if not text.isprintable():
            raise ValueError("non-printable byte in frame")
        tokens = _tokens(text)
        if not tokens:
            raise ValueError("empty frame")
        head, rest = tokens[0], tokens[1:]
        if head.startswith("!") and _KEY.match(head[1:]):
            return Notice(head[1:], _decode_pairs(rest))
        if head.startswith("="):
            raw_id = head[1:]
            request_id = None if raw_id == UNKNOWN_ID else int(raw_id, 10)
            if not rest or rest[0] not in ("ok", "err"):
                raise ValueError("response without ok/err")
            if rest[0] == "ok":
                return Response(request_id, True, _decode_pairs(rest[1:]))
            if len(rest) < 2:
                raise ValueError("error response without a kind")
            return Response(request_id, False, _decode_pairs(rest[2:]), error_kind=rest[1])
        raise ValueError("frame starts with neither '=' nor '!'")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad frame from the agent ({exc}): {line[:200]!r}") from exc


def parse_memory_map(text: str) -> list[tuple[int, int, int]]:
    """The `mem` value of hello: comma-separated `base:size:type` in hex -> (base, size, e820 type)."""
    entries: list[tuple[int, int, int]] = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        if len(parts) != 3:
            raise ProtocolError(f"memory map entry {item!r} is not base:size:type")
        base, size, kind = (int(p, 16) for p in parts)
        entries.append((base, size, kind))
    return entries
