/* 16550 UART: COM1 carries the console, COM2 the agent protocol. Output is polled; input is polled,
 * and a port with its receive interrupt on can also be waited for with the CPU halted. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

void uart_init(uint16_t port);
void uart_put(uint16_t port, uint8_t byte);
bool uart_poll(uint16_t port, uint8_t *byte);
/* Turns on port's "received data" interrupt; its IRQ must be routed and unmasked (pic.h). */
void uart_enable_receive_interrupt(uint16_t port);
/* Returns once port has a byte, halting the CPU between receive interrupts. */
void uart_halt_until_receive(uint16_t port);
