#include "local_apic.h"
#include "cpu.h"
#include "layout.h"
#include "x86.h"

enum local_apic_register {
	APIC_ID = 0x20,
	APIC_EOI = 0xB0,
	APIC_SPURIOUS = 0xF0,
	APIC_ICR_LOW = 0x300,
	APIC_ICR_HIGH = 0x310,
	APIC_LVT_LINT0 = 0x350,
};

#define SPURIOUS_APIC_ENABLED BIT(8)
/* What the APIC delivers for an interrupt withdrawn before the CPU took it; interrupt_dispatch()
 * ignores it, as a spurious interrupt takes no EOI. Bits 0-3 set, as older APICs require. */
#define SPURIOUS_VECTOR 0xFF
#define LVT_EXTINT (7 << 8) /* unmasked, edge, delivery mode ExtINT */

/* Interrupt command register, low half. */
#define ICR_FIXED (0 << 8)
#define ICR_NMI (4 << 8)
#define ICR_INIT (5 << 8)
#define ICR_STARTUP (6 << 8)
#define ICR_DELIVERY_PENDING BIT(12)
#define ICR_ASSERT BIT(14)
#define ICR_ALL_EXCLUDING_SELF (3 << 18)
#define ICR_DESTINATION_SHIFT 24 /* in the high half */

static void write_register(enum local_apic_register offset, uint32_t value)
{
	*(volatile uint32_t *)(LOCAL_APIC_BASE + offset) = value;
}

static uint32_t read_register(enum local_apic_register offset)
{
	return *(volatile uint32_t *)(LOCAL_APIC_BASE + offset);
}

void local_apic_virtual_wire(void)
{
	if (!cpu.apic)
		return;
	write_register(APIC_SPURIOUS, SPURIOUS_APIC_ENABLED | SPURIOUS_VECTOR);
	write_register(APIC_LVT_LINT0, LVT_EXTINT);
}

void local_apic_enable(void)
{
	write_register(APIC_SPURIOUS, SPURIOUS_APIC_ENABLED | SPURIOUS_VECTOR);
}

uint32_t local_apic_id(void)
{
	return read_register(APIC_ID) >> 24;
}

void local_apic_end_of_interrupt(void)
{
	write_register(APIC_EOI, 0);
}

/* The two halves of the ICR are written with interrupts off, so no handler can come in between. */
static void send(uint32_t apic_id, uint32_t command)
{
	uint64_t flags = interrupts_save_disable();
	while (read_register(APIC_ICR_LOW) & ICR_DELIVERY_PENDING)
		cpu_relax();
	write_register(APIC_ICR_HIGH, apic_id << ICR_DESTINATION_SHIFT);
	write_register(APIC_ICR_LOW, command);
	interrupts_restore(flags);
}

void local_apic_send_fixed(uint32_t apic_id, uint8_t vector)
{
	send(apic_id, ICR_FIXED | ICR_ASSERT | vector);
}

void local_apic_send_init(uint32_t apic_id)
{
	send(apic_id, ICR_INIT | ICR_ASSERT);
}

void local_apic_send_startup(uint32_t apic_id, uint64_t entry_pa)
{
	send(apic_id, ICR_STARTUP | ICR_ASSERT | (uint32_t)(entry_pa >> 12));
}

void local_apic_send_nmi_to_others(void)
{
	send(0, ICR_NMI | ICR_ASSERT | ICR_ALL_EXCLUDING_SELF);
}
