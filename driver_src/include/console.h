/* The console on COM1: a log for people (boot report, STOP screens). */
#pragma once
#include "compiler.h"

void console_init(void);
void kprintf(const char *format, ...) PRINTF_LIKE(1, 2);
