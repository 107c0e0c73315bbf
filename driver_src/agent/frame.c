/* Composing frames and sending them to the mailbox or COM2. Strings are escaped here, so no value
 * can break a frame, and no frame holds a doorbell byte. */
#include <stdarg.h>
#include "fmt.h"
#include "protocol.h"
#include "smp.h"
#include "uart.h"
#include "x86.h"

#define COM2_FRAME_MAX 0x10000

static char com2_buffer[COM2_FRAME_MAX];
static char *out;
static size_t used, limit;
static bool spilled;
static bool frame_open;
/* A response an AP composed (dispatch.c): sent by the BSP, which reads and answers every request. */
static bool compose_only, composed;

static void begin(bool response)
{
	compose_only = response && this_cpu()->index != 0;
	composed = false;
	if (mailbox_responding()) {
		out = mailbox_response_area(&limit);
	} else {
		out = com2_buffer;
		limit = sizeof(com2_buffer);
	}
	used = 0;
	spilled = false;
	frame_open = true;
}

static void write_com2(const char *text, size_t length)
{
	for (size_t i = 0; i < length; i++)
		uart_put(COM2_PORT, (uint8_t)text[i]);
}

/* Kept out of put(), which costs a few instructions a byte (each one dear under nested KVM). */
static NOINLINE void spill(char c)
{
	if (!spilled)
		write_com2(out, used);
	spilled = true;
	uart_put(COM2_PORT, (uint8_t)c);
}

static void put(char c)
{
	if (used < limit)
		out[used++] = c;
	else
		spill(c);
}

static NOINLINE void put_text(const char *s)
{
	while (*s)
		put(*s++);
}

/*
 * Values without the printf engine, in helpers kept out of line: each block the hello runs is one
 * more that TCG translates during boot (docs/performance.md), and a copy inlined into every
 * frame_* function is translated once per copy.
 */
static const char hex_digits[] = "0123456789abcdef";

static void put_hex_byte(uint8_t byte)
{
	put(hex_digits[byte >> 4]);
	put(hex_digits[byte & 0xF]);
}

static NOINLINE void put_hex(uint64_t value)
{
	unsigned shift = 60;
	while (shift && !(value >> shift))
		shift -= 4;
	for (;; shift -= 4) {
		put(hex_digits[(value >> shift) & 0xF]);
		if (!shift)
			break;
	}
}

static NOINLINE void put_decimal(uint64_t value)
{
	char digits[20];
	unsigned count = 0;
	do {
		digits[count++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (count)
		put(digits[--count]);
}

static NOINLINE void put_key(const char *key)
{
	put(' ');
	put_text(key);
	put('=');
}

static NOINLINE void put_escaped(char c)
{
	if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') {
		put(c);
		return;
	}
	put('\\');
	put('x');
	put_hex_byte((uint8_t)c);
}

static void escaped_sink(void *context, char c)
{
	(void)context;
	put_escaped(c);
}

void frame_open_response(uint32_t id)
{
	begin(true);
	put('=');
	put_decimal(id);
	put_text(" ok");
}

void frame_open_event(const char *name)
{
	begin(false);
	put('!');
	put_text(name);
}

void frame_hex(const char *key, uint64_t value)
{
	put_key(key);
	put_text("0x");
	put_hex(value);
}

void frame_decimal(const char *key, uint64_t value)
{
	put_key(key);
	put_decimal(value);
}

void frame_boolean(const char *key, bool value)
{
	put_key(key);
	put_text(value ? "true" : "false");
}

void frame_string_open(const char *key)
{
	put_key(key);
	put('"');
}

void frame_string_text(const char *text)
{
	while (*text)
		put_escaped(*text++);
}

void frame_string_hex(uint64_t value)
{
	put_hex(value);
}

void frame_string_decimal(uint64_t value)
{
	put_decimal(value);
}

void frame_string_close(void)
{
	put('"');
}

void frame_string(const char *key, const char *text)
{
	frame_string_open(key);
	frame_string_text(text);
	frame_string_close();
}

void frame_bytes(const char *key, const uint8_t *data, size_t length)
{
	put_key(key);
	put('#');
	for (size_t i = 0; i < length; i++)
		put_hex_byte(data[i]);
}

static void send(void)
{
	if (out == com2_buffer)
		write_com2(out, used);
	else
		mailbox_frame_complete(used);
}

void frame_close(void)
{
	put('\n');
	frame_open = false;
	if (spilled)
		return;
	if (compose_only)
		composed = true;
	else
		send();
}

void frame_send_composed(void)
{
	if (composed)
		send();
	composed = false;
}

void frame_error(uint32_t id, enum error_kind kind, const char *format, ...)
{
	static const char *const kinds[] = {
		[ERROR_MALFORMED] = "malformed",
		[ERROR_OVERSIZED] = "oversized",
		[ERROR_UNKNOWN_COMMAND] = "unknown-command",
		[ERROR_BAD_ARGUMENT] = "bad-argument",
	};
	begin(true);
	put('=');
	if (id == ID_UNREADABLE)
		put('?');
	else
		put_decimal(id);
	put_text(" err ");
	put_text(kinds[kind]);
	frame_string_open("msg");
	va_list args;
	va_start(args, format);
	fmt_vprint(escaped_sink, 0, format, args);
	va_end(args);
	frame_string_close();
	frame_close();
}

void frame_abandon(void)
{
	if (frame_open && spilled) /* only a spilled frame has shown any of itself */
		uart_put(COM2_PORT, '\n');
	frame_open = false;
	mailbox_end_request(); /* publishes the whole answers; whatever follows goes to COM2 */
}
