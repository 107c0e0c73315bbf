/* A small printf engine: %c %s %d %u %x %X, flags '0' and '-', width, %.*s, lengths l ll z. */
#pragma once
#include <stdarg.h>

typedef void (*fmt_sink)(void *context, char c);

void fmt_vprint(fmt_sink sink, void *context, const char *format, va_list args);
