/* The agent loop: read a line, answer it with exactly one frame, never stop serving. */
#include "agent.h"
#include "bugcodes.h"
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

static void serve_mailbox(void)
{
	const char *text;
	size_t length;
	if (mailbox_take_request(&text, &length))
		serve(text, length);
	else
		frame_error(ID_UNREADABLE, ERROR_OVERSIZED, "a mailbox request is at most %u bytes",
			    MAILBOX_REQUEST_MAX);
	mailbox_end_request();
}

void agent_run(void)
{
	frame_open_event("hello");
	hello_keys();
	frame_close();
	for (;;) {
		const char *line;
		size_t length;
		switch (line_read(&line, &length)) {
		case LINE_COMPLETE:
			serve(line, length);
			break;
		case LINE_OVERSIZED:
			frame_error(ID_UNREADABLE, ERROR_OVERSIZED, "a request is at most %u bytes, newline included",
				    REQUEST_MAX);
			break;
		case LINE_MAILBOX:
			serve_mailbox();
			break;
		}
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
