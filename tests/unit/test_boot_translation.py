"""`bench boot --phases`' count of what TCG translated, from QEMU's `-d in_asm` log (no QEMU here)."""

import pytest

from harness.bench import parse_in_asm
from harness.errors import MmhilError

LOG = """----------------
IN:
0xfffffff0:  fa                       cli
0xfffffff1:  e9 0b 00                 jmp      0

----------------
IN:
0xffff0000:  66 0f 01 16 00 00        lgdtl    %cs:0
0x00200000:  0f 31                    rdtsc

----------------
IN:
0x00200002:  a3 00 10 22 00           movl     %eax, 0x221000
0xfffff80000201000:  55               pushq    %rbp
"""


def test_instructions_before_the_kernel_entry_are_the_firmware_s_and_blocks_are_counted() -> None:
    code = parse_in_asm(LOG, 0x200000)
    assert (code.blocks, code.firmware_instructions, code.kernel_instructions) == (3, 3, 3)


def test_a_log_that_never_reaches_the_kernel_is_named() -> None:
    with pytest.raises(MmhilError, match="never reaches the kernel's entry at 0x300000: 6 instructions"):
        parse_in_asm(LOG, 0x300000)
