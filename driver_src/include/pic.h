/*
 * The 8259A pair routes ISA IRQs to the CPU: IRQ n arrives as vector PIC_VECTOR_BASE + n, clear of
 * the exceptions, through the local APIC's LINT0 (local_apic.h). Every machine (microvm, pc, q35)
 * has one under TCG and KVM alike, and it needs no IOAPIC.
 */
#pragma once
#include <stdbool.h>

#define PIC_VECTOR_BASE 0x20
#define PIC_IRQ_COUNT 16

/* Moves the vectors to PIC_VECTOR_BASE and masks every IRQ. */
void pic_init(void);
void pic_unmask(unsigned irq);
/* Ends irq's interrupt. False when it was spurious (IRQ 7 or 15 with its in-service bit clear). */
bool pic_end_of_interrupt(unsigned irq);
