/* Writing frames to COM2, or to the mailbox while answering a request from it. Strings are escaped
 * here, so no value can break a frame, and no frame holds a doorbell byte. */
#include <stdarg.h>
#include "fmt.h"
#include "protocol.h"
#include "uart.h"
#include "x86.h"

static bool frame_open;

static void put(char c)
{
	if (mailbox_responding())
		mailbox_put((uint8_t)c);
	else
		uart_put(COM2_PORT, (uint8_t)c);
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
	frame_open = true;
	raw_printf("=%u ok", id);
}

void frame_open_event(const char *name)
{
	frame_open = true;
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
}

void frame_error(uint32_t id, enum error_kind kind, const char *format, ...)
{
	static const char *const kinds[] = {
		[ERROR_MALFORMED] = "malformed",
		[ERROR_OVERSIZED] = "oversized",
		[ERROR_UNKNOWN_COMMAND] = "unknown-command",
		[ERROR_BAD_ARGUMENT] = "bad-argument",
	};
	frame_open = true;
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
	bool unseen = mailbox_abandon_response(); /* whatever follows goes to COM2 */
	if (frame_open && !unseen)
		uart_put(COM2_PORT, '\n');
	frame_open = false;
}
