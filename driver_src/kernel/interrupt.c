/*
 * Interrupts. The kernel takes them only while it waits (for input, for another CPU, for a lock or
 * a shootdown), so a handler's job is small: the TLB shootdown flushes what it was asked to; the
 * wake-up IPI and the COM2 receive interrupt only end a HLT (the waiter checks for itself), and are
 * acknowledged. Anything else is ignored, never taken for an exception.
 */
#include "console.h"
#include "local_apic.h"
#include "pagetable.h"
#include "pic.h"
#include "smp.h"
#include "trap.h"
#include "x86.h"

void interrupt_dispatch(uint64_t vector)
{
	if (vector == TLB_SHOOTDOWN_VECTOR || vector == WAKE_VECTOR) {
		if (vector == TLB_SHOOTDOWN_VECTOR)
			tlb_shootdown_interrupt();
		local_apic_end_of_interrupt();
		return;
	}
	if (vector >= PIC_VECTOR_BASE && vector < PIC_VECTOR_BASE + PIC_IRQ_COUNT) {
		unsigned irq = (unsigned)(vector - PIC_VECTOR_BASE);
		if (pic_end_of_interrupt(irq) && irq != COM2_IRQ) /* masked: the PIC should not have sent it */
			kprintf("mmhil: ignored IRQ %u\n", irq);
		return;
	}
	/* Not the 8259's: e.g. the local APIC's spurious vector, which takes no EOI. */
	kprintf("mmhil: ignored interrupt vector 0x%lx\n", vector);
}
