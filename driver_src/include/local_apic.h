/* The local APIC, used only as the 8259's way in to the CPU. */
#pragma once

/*
 * "Virtual wire" mode: software-enables the local APIC and puts LINT0 in ExtINT mode, so the
 * 8259's INTR reaches the CPU. Firmware cannot be relied on for it: SeaBIOS sets it up, but on
 * microvm (qboot) QEMU 7.2 leaves LINT0 masked. Runs on the kernel's own tables, which map the
 * registers at LOCAL_APIC_BASE (layout.h); without a local APIC the 8259 drives INTR itself.
 */
void local_apic_virtual_wire(void);
