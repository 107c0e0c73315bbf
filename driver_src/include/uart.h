/* Polled 16550 UART: COM1 carries the console, COM2 the agent protocol. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

void uart_init(uint16_t port);
void uart_put(uint16_t port, uint8_t byte);
bool uart_poll(uint16_t port, uint8_t *byte);
