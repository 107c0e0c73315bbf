/*
 * Interrupts. The kernel takes them only while the agent halts for input (halt_until_interrupt), so
 * a handler's one job is to wake it: the COM2 receive interrupt is acknowledged and the agent reads
 * the UART itself. Anything else is ignored, never taken for an exception.
 */
#include "console.h"
#include "pic.h"
#include "trap.h"
#include "x86.h"

void interrupt_dispatch(uint64_t vector)
{
	if (vector >= PIC_VECTOR_BASE && vector < PIC_VECTOR_BASE + PIC_IRQ_COUNT) {
		unsigned irq = (unsigned)(vector - PIC_VECTOR_BASE);
		if (pic_end_of_interrupt(irq) && irq != COM2_IRQ) /* masked: the PIC should not have sent it */
			kprintf("mmhil: ignored IRQ %u\n", irq);
		return;
	}
	/* Not the 8259's: e.g. the local APIC's spurious vector, which takes no EOI. */
	kprintf("mmhil: ignored interrupt vector 0x%lx\n", vector);
}
