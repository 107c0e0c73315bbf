/* The two 8259A PICs, master (IRQ 0-7) and slave (IRQ 8-15, cascaded on the master's IRQ 2). */
#include "pic.h"
#include "x86.h"

enum pic_port {
	MASTER_COMMAND = 0x20,
	MASTER_DATA = 0x21,
	SLAVE_COMMAND = 0xA0,
	SLAVE_DATA = 0xA1,
};

#define ICW1_INIT_WITH_ICW4 0x11 /* edge triggered, cascaded, ICW4 follows */
#define ICW3_MASTER_SLAVE_ON_IRQ2 0x04
#define ICW3_SLAVE_ID 2
#define ICW4_8086 0x01           /* 8086 mode, normal (not automatic) EOI */
#define OCW2_EOI 0x20            /* non-specific EOI */
#define OCW3_READ_ISR 0x0B       /* the next command-port read returns the in-service register */
#define MASK_ALL 0xFF
#define CASCADE_IRQ 2
#define IRQS_PER_PIC 8
#define SPURIOUS_IRQ 7           /* what a PIC reports when the request vanished before the CPU took it */

static uint8_t masks[2] = {MASK_ALL, MASK_ALL};

static void write_masks(void)
{
	outb(MASTER_DATA, masks[0]);
	outb(SLAVE_DATA, masks[1]);
}

void pic_init(void)
{
	outb(MASTER_COMMAND, ICW1_INIT_WITH_ICW4);
	outb(SLAVE_COMMAND, ICW1_INIT_WITH_ICW4);
	outb(MASTER_DATA, PIC_VECTOR_BASE);
	outb(SLAVE_DATA, PIC_VECTOR_BASE + IRQS_PER_PIC);
	outb(MASTER_DATA, ICW3_MASTER_SLAVE_ON_IRQ2);
	outb(SLAVE_DATA, ICW3_SLAVE_ID);
	outb(MASTER_DATA, ICW4_8086);
	outb(SLAVE_DATA, ICW4_8086);
	write_masks();
}

void pic_unmask(unsigned irq)
{
	if (irq >= IRQS_PER_PIC)
		masks[0] &= (uint8_t)~(1u << CASCADE_IRQ);
	masks[irq / IRQS_PER_PIC] &= (uint8_t)~(1u << irq % IRQS_PER_PIC);
	write_masks();
}

static bool in_service(uint16_t command_port, unsigned line)
{
	outb(command_port, OCW3_READ_ISR);
	return inb(command_port) >> line & 1;
}

bool pic_end_of_interrupt(unsigned irq)
{
	bool slave = irq >= IRQS_PER_PIC;
	uint16_t port = slave ? SLAVE_COMMAND : MASTER_COMMAND;
	if (irq % IRQS_PER_PIC == SPURIOUS_IRQ && !in_service(port, SPURIOUS_IRQ)) {
		if (slave) /* the master did deliver the cascade: it still needs its EOI */
			outb(MASTER_COMMAND, OCW2_EOI);
		return false;
	}
	if (slave)
		outb(SLAVE_COMMAND, OCW2_EOI);
	outb(MASTER_COMMAND, OCW2_EOI);
	return true;
}
