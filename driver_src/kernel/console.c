#include <stdarg.h>
#include "console.h"
#include "fmt.h"
#include "uart.h"
#include "x86.h"

void console_init(void)
{
	uart_init(COM1_PORT);
}

static void console_sink(void *context, char c)
{
	(void)context;
	uart_put(COM1_PORT, (uint8_t)c);
}

void kprintf(const char *format, ...)
{
	va_list args;
	va_start(args, format);
	fmt_vprint(console_sink, 0, format, args);
	va_end(args);
}
