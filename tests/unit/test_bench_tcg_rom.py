"""The ROMs `mmhil bench tcg` times: laid out for the x86 reset vector, with the exit after the body."""

import pytest

from harness.bench_tcg import EXIT_CODE, RESET_VECTOR, ROM_SIZE, cases, rom_image


def test_the_reset_vector_jumps_to_the_body_at_offset_0() -> None:
    image = rom_image(b"\x90")
    assert len(image) == ROM_SIZE
    assert image[RESET_VECTOR] == 0xE9  # near jmp, 16-bit displacement from the next instruction
    displacement = int.from_bytes(image[RESET_VECTOR + 1:RESET_VECTOR + 3], "little")
    assert (RESET_VECTOR + 3 + displacement) & 0xFFFF == 0


def test_the_exit_follows_the_body_and_everything_else_halts() -> None:
    body = b"\x40" * 100
    image = rom_image(body)
    assert image[:100] == body
    assert image[100:100 + len(EXIT_CODE)] == EXIT_CODE
    assert set(image[100 + len(EXIT_CODE):RESET_VECTOR]) == {0xF4}


def test_a_body_that_reaches_the_reset_vector_is_refused() -> None:
    with pytest.raises(ValueError, match="overrun the reset vector at 0xfff0"):
        rom_image(b"\x40" * (RESET_VECTOR - len(EXIT_CODE) + 1))
    assert len(rom_image(b"\x40" * (RESET_VECTOR - len(EXIT_CODE)))) == ROM_SIZE


def test_every_case_fits_and_counts_what_its_body_holds() -> None:
    for case in cases():
        rom_image(case.body)
        assert len(case.body) % case.count == 0 and len(case.body) // case.count in (1, 2), case.name
