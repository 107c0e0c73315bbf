#include <stdarg.h>
#include "boot_phases.h"
#include "console.h"
#include "fmt.h"
#include "uart.h"
#include "x86.h"

void console_init(void)
{
	uart_init(COM1_PORT);
}

static uint64_t ticks_written, bytes_written;

static void console_sink(void *context, char c)
{
	(void)context;
	uart_put(COM1_PORT, (uint8_t)c);
	bytes_written++;
}

void kprintf(const char *format, ...)
{
	uint64_t start = rdtsc();
	va_list args;
	va_start(args, format);
	fmt_vprint(console_sink, 0, format, args);
	va_end(args);
	ticks_written += rdtsc() - start;
}

uint64_t console_ticks(void)
{
	return ticks_written;
}

uint64_t console_bytes(void)
{
	return bytes_written;
}
