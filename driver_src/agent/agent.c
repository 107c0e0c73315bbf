/* The agent loop: read a line, answer it with exactly one frame, never stop serving. */
#include "agent.h"
#include "boot_phases.h"
#include "bootinfo.h"
#include "bugcodes.h"
#include "console.h"
#include "kstring.h"
#include "pic.h"
#include "protocol.h"
#include "uart.h"
#include "x86.h"

void agent_init(void)
{
	uart_init(COM2_PORT);
	uart_enable_receive_interrupt(COM2_PORT);
	pic_unmask(COM2_IRQ);
	mailbox_init();
}

static void serve(const char *line, size_t length)
{
	struct request r;
	const char *why;
	if (!request_parse(line, length, &r, &why)) {
		frame_error(r.id, ERROR_MALFORMED, "%s", why);
		return;
	}
	dispatch(&r);
}

/* A mailbox request holds one or more lines, each answered as if it had come alone on COM2. */
static void serve_mailbox(void)
{
	const char *text;
	size_t length;
	if (!mailbox_take_request(&text, &length)) {
		frame_error(ID_UNREADABLE, ERROR_OVERSIZED, "a mailbox request is at most %u bytes",
			    MAILBOX_REQUEST_CAPACITY);
		mailbox_end_request();
		return;
	}
	do {
		const char *newline = memchr(text, '\n', length);
		size_t line = newline ? (size_t)(newline - text) : length;
		if (line > REQUEST_MAX - 1)
			frame_error(ID_UNREADABLE, ERROR_OVERSIZED, "a request line is at most %u bytes",
				    REQUEST_MAX - 1);
		else
			serve(text, line && text[line - 1] == '\r' ? line - 1 : line);
		size_t consumed = newline ? line + 1 : line;
		text += consumed;
		length -= consumed;
	} while (length);
	mailbox_end_request();
}

static void serve_com2_byte(uint8_t byte)
{
	const char *line;
	size_t length;
	switch (line_feed(byte, &line, &length)) {
	case LINE_INCOMPLETE:
		break;
	case LINE_COMPLETE:
		serve(line, length);
		break;
	case LINE_OVERSIZED:
		frame_error(ID_UNREADABLE, ERROR_OVERSIZED, "a request is at most %u bytes, newline included",
			    REQUEST_MAX);
		break;
	case LINE_DOORBELL:
		/* It woke us; a request it announced is found by the poll. A late one is dropped. */
		break;
	}
}

/*
 * Waiting for work, in TSC ticks (~2.4 GHz here; the TSC runs at the host's rate under TCG and KVM).
 * The mailbox is polled all the time: a poll is a load from RAM. COM2 is looked at every
 * COM2_LOOK_TICKS while it is quiet, and at every turn while its bytes flow: a look is an I/O exit.
 * After QUIET_TICKS (~0.9 ms) without work the CPU halts until a COM2 byte, so an idle VM costs no
 * host CPU. Most gaps between a test's requests are the host's own Python work: spinning through
 * them took that core from the other xdist worker (at 2^24 ticks, ~7 ms, `-n 2` ran a third slower).
 * A host whose cores are all taken by such workers asks for a shorter interval in the mailbox.
 */
#define COM2_LOOK_TICKS BIT(17)
#define QUIET_TICKS BIT(21)

uint64_t agent_quiet_ticks(void)
{
	return mailbox_quiet_ticks(QUIET_TICKS);
}

static void halt_until_com2_byte(void)
{
	if (mailbox_agent_halting())
		uart_halt_until_receive(COM2_PORT);
	mailbox_agent_polling();
}

/* On COM2, or, when the host maps guest RAM and said so with hello=mailbox, as the mailbox's first
 * answer: ~200 UART bytes then become one doorbell byte. */
static bool hello_in_mailbox(void)
{
	const char *value;
	size_t length;
	if (!cmdline_value("hello", &value, &length) || (length == 4 && !memcmp(value, "com2", 4)))
		return false;
	if (length == 7 && !memcmp(value, "mailbox", 7))
		return true;
	kprintf("mmhil: hello=%.*s is not mailbox or com2: saying hello on COM2\n", (int)length, value);
	return false;
}

void agent_say_hello(void)
{
	bool in_mailbox = hello_in_mailbox();
	if (in_mailbox)
		mailbox_compose_hello();
	else
		mailbox_open(); /* before the hello: a host that has read it may map the mailbox at once */
	frame_open_event("hello");
	hello_keys();
	/* Before its last byte: the host cannot have the hello before this stamp, whoever runs first. */
	boot_phase_done(BOOT_HELLO);
	frame_close();
	if (in_mailbox)
		mailbox_open();
}

void agent_serve(void)
{
	uint64_t last_work = rdtsc(), last_com2_look = 0, last_com2_byte = 0;
	for (;;) {
		if (mailbox_request_pending()) {
			serve_mailbox();
			last_work = rdtsc();
			continue;
		}
		uint64_t now = rdtsc();
		if (line_in_progress() || now - last_com2_byte < COM2_LOOK_TICKS ||
		    now - last_com2_look >= COM2_LOOK_TICKS) {
			uint8_t byte;
			last_com2_look = now;
			if (uart_poll(COM2_PORT, &byte)) {
				serve_com2_byte(byte);
				last_work = last_com2_byte = rdtsc();
				continue;
			}
		}
		if (now - last_work >= agent_quiet_ticks()) {
			halt_until_com2_byte();
			last_work = rdtsc();
			continue;
		}
		cpu_relax();
	}
}

void agent_abandon_frame(void)
{
	frame_abandon();
}

void agent_send_bugcheck(const struct bugcheck *b)
{
	frame_abandon();
	frame_open_event("bugcheck");
	frame_hex("code", b->code);
	frame_hex("p1", b->parameters[0]);
	frame_hex("p2", b->parameters[1]);
	frame_hex("p3", b->parameters[2]);
	frame_hex("p4", b->parameters[3]);
	frame_string("name", bugcheck_name(b->code));
	frame_hex("rip", b->rip);
	frame_hex("cr3", b->cr3);
	frame_decimal("cpu", b->cpu);
	if (b->from_exception) {
		frame_decimal("vector", b->vector);
		frame_hex("error", b->error);
		frame_hex("cr2", b->cr2);
	}
	frame_close();
}
