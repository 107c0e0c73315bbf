/* 16550 UART: polled, but for the receive interrupt that wakes uart_halt_until_receive(). */
#include "uart.h"
#include "x86.h"

enum uart_register {
	UART_DATA = 0,
	UART_INTERRUPT_ENABLE = 1,
	UART_DIVISOR_LOW = 0, /* with LCR.DLAB */
	UART_DIVISOR_HIGH = 1,
	UART_FIFO_CONTROL = 2,
	UART_LINE_CONTROL = 3,
	UART_MODEM_CONTROL = 4,
	UART_LINE_STATUS = 5,
};

#define LCR_8N1 0x03
#define LCR_DLAB 0x80
/* FIFOs on, receive trigger level 14: QEMU's 16550 takes that many bytes per read from its chardev
 * (with level 1 it takes one byte per main-loop turn), but interrupts only at 14 bytes or after 4
 * character times (~350 us at 115200 baud). */
#define FCR_ENABLE_CLEAR_TRIGGER_14 0xC7
#define FCR_ENABLE_TRIGGER_14 0xC1
#define FCR_ENABLE_TRIGGER_1 0x01
#define MCR_DTR_RTS 0x03 /* OUT2 clear: no interrupt line */
#define MCR_DTR_RTS_OUT2 0x0B /* OUT2 gates the IRQ line on PC boards (QEMU's model ignores it) */
#define IER_RECEIVED_DATA 0x01
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

void uart_init(uint16_t port)
{
	outb(port + UART_INTERRUPT_ENABLE, 0);
	outb(port + UART_LINE_CONTROL, LCR_DLAB);
	outb(port + UART_DIVISOR_LOW, 1); /* 115200 baud */
	outb(port + UART_DIVISOR_HIGH, 0);
	outb(port + UART_LINE_CONTROL, LCR_8N1);
	outb(port + UART_FIFO_CONTROL, FCR_ENABLE_CLEAR_TRIGGER_14);
	outb(port + UART_MODEM_CONTROL, MCR_DTR_RTS);
}

/* An absent UART reads as 0xFF, which looks "empty", so this never spins forever. */
void uart_put(uint16_t port, uint8_t byte)
{
	while (!(inb(port + UART_LINE_STATUS) & LSR_THR_EMPTY))
		;
	outb(port + UART_DATA, byte);
}

bool uart_poll(uint16_t port, uint8_t *byte)
{
	if (!(inb(port + UART_LINE_STATUS) & LSR_DATA_READY))
		return false;
	*byte = inb(port + UART_DATA);
	return true;
}

void uart_enable_receive_interrupt(uint16_t port)
{
	outb(port + UART_MODEM_CONTROL, MCR_DTR_RTS_OUT2);
	outb(port + UART_INTERRUPT_ENABLE, IER_RECEIVED_DATA);
}

static bool data_ready(uint16_t port)
{
	return inb(port + UART_LINE_STATUS) & LSR_DATA_READY;
}

/*
 * Interrupts stay off but for the halt itself, so a byte arriving after the last check still raises
 * an IRQ that wakes it (halt_until_interrupt). While halted the trigger level is 1, so the first
 * byte interrupts at once; then back to 14 for bulk reads. These FCR writes leave the FIFO alone.
 */
void uart_halt_until_receive(uint16_t port)
{
	if (data_ready(port))
		return;
	outb(port + UART_FIFO_CONTROL, FCR_ENABLE_TRIGGER_1);
	while (!data_ready(port))
		halt_until_interrupt();
	outb(port + UART_FIFO_CONTROL, FCR_ENABLE_TRIGGER_14);
}
