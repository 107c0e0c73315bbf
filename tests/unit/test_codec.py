"""The agent protocol codec (docs/agent-protocol.md), without a guest."""

import pytest

from harness.agent.codec import (
    MAX_REQUEST_BYTES,
    Notice,
    Response,
    decode_frame,
    decode_value,
    encode_request,
    encode_value,
    parse_cpu_token,
    parse_memory_map,
)
from harness.errors import ProtocolError


def test_request_spells_integers_in_hex_and_bytes_with_a_hash() -> None:
    assert encode_request(7, "write_va", 0xFFFFF80000201000, b"\x00\xab") == b"7 write_va 0xfffff80000201000 #00ab\n"


def test_a_request_for_a_cpu_carries_cpu_k_right_after_the_id() -> None:
    assert encode_request(9, "MmGetPhysicalAddress", 0x1000, cpu=3) == b"9 cpu=3 MmGetPhysicalAddress 0x1000\n"
    assert encode_request(9, "hello", cpu=0) == b"9 cpu=0 hello\n"
    assert encode_request(9, "hello") == b"9 hello\n", "no token: the BSP"


@pytest.mark.parametrize("bad_cpu", [-1, 1 << 32, True])
def test_a_cpu_index_outside_the_protocol_range_is_refused(bad_cpu: int) -> None:
    with pytest.raises(ValueError, match="not a CPU index"):
        encode_request(1, "hello", cpu=bad_cpu)


@pytest.mark.parametrize(("token", "cpu"), [("cpu=2", 2), ("cpu=0x3", 3), ("cpu=0", 0), ("hello", None),
                                            ("0x10", None)])
def test_cpu_tokens_parse_as_protocol_integers(token: str, cpu: int | None) -> None:
    assert parse_cpu_token(token) == cpu


@pytest.mark.parametrize("token", ["cpu=", "cpu=x", "cpu=true", "cpu=#00", "cpu=-1"])
def test_a_cpu_token_without_an_integer_is_an_error(token: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_token(token)


@pytest.mark.parametrize("bad_id", [0, -1, 1 << 32])
def test_request_ids_outside_the_protocol_range_are_refused(bad_id: int) -> None:
    with pytest.raises(ValueError, match="request id"):
        encode_request(bad_id, "hello")


def test_a_request_over_the_size_limit_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_request(1, "write_va", 0, b"\x00" * (MAX_REQUEST_BYTES // 2))


def test_integers_must_fit_64_bits() -> None:
    with pytest.raises(ValueError):
        encode_value(1 << 64)
    with pytest.raises(ValueError):
        decode_value(str(1 << 64))
    assert decode_value("18446744073709551615") == (1 << 64) - 1


@pytest.mark.parametrize(
    "value", [0, 1, 0xFFFF_FFFF_FFFF_FFFF, True, False, b"", b"\x00\xff", "", "plain", 'q"uo\\te', "tab\there"]
)
def test_every_value_type_round_trips(value: object) -> None:
    assert decode_value(encode_value(value)) == value  # type: ignore[arg-type]


def test_ok_response_decodes_typed_values() -> None:
    frame = decode_frame(b'=12 ok pa=0x1000 valid=true data=#0102 msg="a b"\r')
    assert frame == Response(12, True, {"pa": 0x1000, "valid": True, "data": b"\x01\x02", "msg": "a b"})


def test_error_response_keeps_kind_and_message() -> None:
    frame = decode_frame(b'=? err malformed msg="bad \\x22 line"')
    assert isinstance(frame, Response)
    assert (frame.request_id, frame.ok, frame.error_kind) == (None, False, "malformed")
    assert frame.error_message == 'bad " line'


def test_notices_decode_by_kind() -> None:
    frame = decode_frame(b"!bugcheck code=0x50 p1=0xfffff98000000000 p2=0x2 p3=0x0 p4=0x0 name=\"X\" rip=0x1 cr3=0x2")
    assert isinstance(frame, Notice)
    assert frame.kind == "bugcheck"
    assert frame.values["code"] == 0x50


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"=5 maybe",
        b"=5 err",
        b"=x ok",
        b"=5 ok key",
        b"=5 ok Key=1",
        b"=5 ok a=1 a=2",
        b"=5 ok a=0xZZ",
        b'=5 ok s="unterminated',
        b"=5 ok s=\"\\q\"",
        b"=5 ok a=\xff",
        b"=5 ok a=1\x00",
        b"=5 ok b=#abc",
    ],
)
def test_malformed_frames_raise_protocol_error_quoting_the_line(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad frame from the agent"):
        decode_frame(line)


def test_memory_map_parses_hex_triples() -> None:
    assert parse_memory_map("0:9fc00:1,100000:fef0000:1") == [(0, 0x9FC00, 1), (0x100000, 0xFEF0000, 1)]
    with pytest.raises(ProtocolError):
        parse_memory_map("0:1")
