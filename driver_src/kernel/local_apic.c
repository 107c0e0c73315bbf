#include "local_apic.h"
#include "cpu.h"
#include "layout.h"

enum local_apic_register {
	APIC_SPURIOUS = 0xF0,
	APIC_LVT_LINT0 = 0x350,
};

#define SPURIOUS_APIC_ENABLED BIT(8)
/* What the APIC delivers for an interrupt withdrawn before the CPU took it; interrupt_dispatch()
 * ignores it, as a spurious interrupt takes no EOI. Bits 0-3 set, as older APICs require. */
#define SPURIOUS_VECTOR 0xFF
#define LVT_EXTINT (7 << 8) /* unmasked, edge, delivery mode ExtINT */

static void write_register(enum local_apic_register offset, uint32_t value)
{
	*(volatile uint32_t *)(LOCAL_APIC_BASE + offset) = value;
}

void local_apic_virtual_wire(void)
{
	if (!cpu.apic)
		return;
	write_register(APIC_SPURIOUS, SPURIOUS_APIC_ENABLED | SPURIOUS_VECTOR);
	write_register(APIC_LVT_LINT0, LVT_EXTINT);
}
