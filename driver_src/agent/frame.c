/* Composing frames and sending them to the mailbox or COM2. Strings are escaped here, so no value
 * can break a frame, and no frame holds a doorbell byte. */
#include <stdarg.h>
#include "fmt.h"
#include "protocol.h"
#include "uart.h"
#include "x86.h"

#define COM2_FRAME_MAX 0x10000

static char com2_buffer[COM2_FRAME_MAX];
static char *out;
static size_t used, limit;
static bool spilled;
static bool frame_open;

static void begin(void)
{
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
static __attribute__((noinline)) void spill(char c)
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

static void put_text(const char *s)
{
	while (*s)
		put(*s++);
}

static void raw_sink(void *context, char c)
{
	(void)context;
	put(c);
}

static void raw_printf(const char *format, ...)
{
	va_list args;
	va_start(args, format);
	fmt_vprint(raw_sink, 0, format, args);
	va_end(args);
}

static void escaped_sink(void *context, char c)
{
	(void)context;
	if (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\')
		put(c);
	else
		raw_printf("\\x%02x", (unsigned char)c);
}

void frame_open_response(uint32_t id)
{
	begin();
	raw_printf("=%u ok", id);
}

void frame_open_event(const char *name)
{
	begin();
	put('!');
	put_text(name);
}

void frame_hex(const char *key, uint64_t value)
{
	raw_printf(" %s=0x%lx", key, value);
}

void frame_decimal(const char *key, uint64_t value)
{
	raw_printf(" %s=%lu", key, value);
}

void frame_boolean(const char *key, bool value)
{
	raw_printf(" %s=%s", key, value ? "true" : "false");
}

void frame_string_open(const char *key)
{
	raw_printf(" %s=\"", key);
}

void frame_string_printf(const char *format, ...)
{
	va_list args;
	va_start(args, format);
	fmt_vprint(escaped_sink, 0, format, args);
	va_end(args);
}

void frame_string_close(void)
{
	put('"');
}

void frame_string(const char *key, const char *text)
{
	frame_string_open(key);
	frame_string_printf("%s", text);
	frame_string_close();
}

void frame_bytes(const char *key, const uint8_t *data, size_t length)
{
	raw_printf(" %s=#", key);
	for (size_t i = 0; i < length; i++) {
		put("0123456789abcdef"[data[i] >> 4]);
		put("0123456789abcdef"[data[i] & 0xF]);
	}
}

void frame_close(void)
{
	put('\n');
	frame_open = false;
	if (spilled)
		return;
	if (out == com2_buffer)
		write_com2(out, used);
	else
		mailbox_frame_complete(used);
}

void frame_error(uint32_t id, enum error_kind kind, const char *format, ...)
{
	static const char *const kinds[] = {
		[ERROR_MALFORMED] = "malformed",
		[ERROR_OVERSIZED] = "oversized",
		[ERROR_UNKNOWN_COMMAND] = "unknown-command",
		[ERROR_BAD_ARGUMENT] = "bad-argument",
	};
	begin();
	if (id == ID_UNREADABLE)
		raw_printf("=? err %s", kinds[kind]);
	else
		raw_printf("=%u err %s", id, kinds[kind]);
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
