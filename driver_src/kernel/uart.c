/* 16550 UART, polled: the kernel never enables interrupts. */
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
/* FIFOs on and cleared, receive trigger level 14: QEMU's 16550 takes that many bytes per read from its
 * chardev (with level 1 it takes one byte per main-loop turn). */
#define FCR_ENABLE_CLEAR_TRIGGER_14 0xC7
#define MCR_DTR_RTS 0x03 /* OUT2 stays clear: no interrupt line */
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
