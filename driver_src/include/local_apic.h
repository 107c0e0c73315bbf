/*
 * The local APIC (xAPIC mode, its registers mapped at LOCAL_APIC_BASE, layout.h): on the BSP the
 * 8259's way in to the CPU, on every CPU the sender and receiver of inter-processor interrupts.
 */
#pragma once
#include <stdint.h>

/*
 * "Virtual wire" mode on the BSP: software-enables the local APIC and puts LINT0 in ExtINT mode, so
 * the 8259's INTR reaches the CPU. Firmware cannot be relied on for it: SeaBIOS sets it up, but on
 * microvm (qboot) QEMU 7.2 leaves LINT0 masked. Runs on the kernel's own tables, which map the
 * registers at LOCAL_APIC_BASE (layout.h); without a local APIC the 8259 drives INTR itself.
 */
void local_apic_virtual_wire(void);
/* On an AP: software-enables its local APIC (LINT0 and LINT1 stay masked, as INIT left them). */
void local_apic_enable(void);
uint32_t local_apic_id(void);
void local_apic_end_of_interrupt(void);

/* Inter-processor interrupts to one CPU by APIC ID (physical destination, edge, assert). */
void local_apic_send_fixed(uint32_t apic_id, uint8_t vector);
void local_apic_send_init(uint32_t apic_id);
void local_apic_send_startup(uint32_t apic_id, uint64_t entry_pa);
/* An NMI to every CPU but this one. */
void local_apic_send_nmi_to_others(void);
