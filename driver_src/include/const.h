/* Constants shared by C and assembly. */
#pragma once

#ifdef __ASSEMBLER__
#define U64_C(x) x
#else
#define U64_C(x) x##ul /* unsigned long: uint64_t on x86-64 */
#endif

#define BIT(n) (U64_C(1) << (n))
