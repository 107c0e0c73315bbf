/* The agent protocol (docs/agent-protocol.md): reading lines, values, requests; writing frames. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "compiler.h"

#define PROTOCOL_VERSION 4
#define REQUEST_MAX 16384 /* bytes per request, newline included */
#define VALUES_MAX 8      /* the most any command takes */

/*
 * line.c: COM2's bytes, fed one at a time, become request lines in one bounded buffer. An oversized
 * line is read to its end and dropped. Byte 0x07 at the start of a line is the mailbox doorbell,
 * never part of a line; anywhere else it is an ordinary byte.
 */
enum line_status { LINE_INCOMPLETE, LINE_COMPLETE, LINE_OVERSIZED, LINE_DOORBELL };
enum line_status line_feed(uint8_t byte, const char **line, size_t *length);
/* Bytes of a line have arrived and its newline has not. */
bool line_in_progress(void);

/*
 * mailbox.c: the memory channel beside the serial one (docs/agent-protocol.md, "Mailbox"). The host
 * writes requests into guest RAM; the agent polls for them and answers in RAM, and while both sides
 * poll no byte crosses COM2. A UART byte is a VM exit under nested KVM and a chardev write per byte
 * under TCG, so the doorbells (one byte each way) are only for a side that stopped polling: the agent
 * halts after a quiet interval, the host blocks after a bounded spin.
 */
#define DOORBELL_REQUEST 0x07  /* host to guest: wake up, a request waits in the mailbox */
#define DOORBELL_RESPONSE 0x06 /* guest to host: the answers wait in the mailbox */
#define MAILBOX_REQUEST_CAPACITY 0x10000u  /* a batch: request lines of at most REQUEST_MAX - 1 bytes */
#define MAILBOX_RESPONSE_CAPACITY 0x40000u

void mailbox_init(void);
/* The hello goes into the response area (the host asked for it there) until mailbox_open(). */
void mailbox_compose_hello(void);
/* Writes the magic, last: the host may use the mailbox from then on. With the hello composed in it,
 * publishes the hello and rings the host once. */
void mailbox_open(void);
uint64_t mailbox_physical_address(void);
bool mailbox_request_pending(void);
/* Takes the waiting request (one or more lines); false when it is longer than the request area (it
 * is then not read). Either way the answers go to the mailbox until mailbox_end_request(). */
bool mailbox_take_request(const char **text, size_t *length);
bool mailbox_responding(void);
/* Where the next answer is composed, and how much room the host lets it have. */
char *mailbox_response_area(size_t *limit);
/* The answer composed in the response area is whole: the next one goes after it. */
void mailbox_frame_complete(size_t length);
/* Publishes the whole answers (a bugcheck may cut a batch short) and rings if the host waits. */
void mailbox_end_request(void);
/* The agent is about to halt: tells the host so, and false if a request arrived meanwhile. */
bool mailbox_agent_halting(void);
void mailbox_agent_polling(void);
/* How long to poll without work before halting: own, or less when the host asks for less. */
uint64_t mailbox_quiet_ticks(uint64_t own);

/* value.c */
enum value_type { VALUE_INTEGER, VALUE_BOOLEAN, VALUE_STRING, VALUE_BYTES };

struct value {
	enum value_type type;
	uint64_t integer;  /* integer, boolean */
	const char *text;  /* bytes: the hex digits; string: the text between the quotes */
	size_t length;
};

bool value_parse(const char *token, size_t length, struct value *value);
/* Decodes a VALUE_BYTES value into out, which holds value->length / 2 bytes. */
void bytes_decode(const struct value *value, uint8_t *out);

/* request.c */
enum error_kind { ERROR_MALFORMED, ERROR_OVERSIZED, ERROR_UNKNOWN_COMMAND, ERROR_BAD_ARGUMENT };

#define ID_UNREADABLE 0 /* answered as "=?" */

struct request {
	uint32_t id;
	bool cpu_given;   /* `cpu=<K>` followed the id: the request runs on CPU K */
	struct value cpu; /* K as it was spelt (dispatch() checks it is an online CPU) */
	const char *command;
	size_t command_length;
	unsigned count; /* values given, even beyond VALUES_MAX */
	struct value values[VALUES_MAX];
};

/* False for a malformed line: *why says what is wrong, request->id is set when it could be read. */
bool request_parse(const char *line, size_t length, struct request *request, const char **why);

/*
 * dispatch.c: answers a parsed request with exactly one frame. The command must exist, the CPU be
 * online and the values fit the command's signature; then the command runs, on this CPU or, for
 * `cpu=<K>`, on CPU K (smp.h), which composes the answer while this CPU waits and then sends it.
 */
void dispatch(const struct request *request);

/*
 * frame.c: one frame at a time, composed whole and sent by frame_close(): into the mailbox while
 * mailbox_responding(), else to COM2. A frame longer than its buffer spills: what is composed goes
 * to COM2 and the rest follows it there.
 */
void frame_open_response(uint32_t id);
void frame_open_event(const char *name);
void frame_hex(const char *key, uint64_t value);
void frame_decimal(const char *key, uint64_t value);
void frame_boolean(const char *key, bool value);
void frame_string(const char *key, const char *text);
void frame_string_open(const char *key);
/* Pieces of an open string value (hex without 0x). No printf engine: a frame runs few instructions,
 * and each is one TCG translates the first time it runs during boot. */
void frame_string_text(const char *text);
void frame_string_hex(uint64_t value);
void frame_string_decimal(uint64_t value);
void frame_string_close(void);
void frame_bytes(const char *key, const uint8_t *data, size_t length);
/* Ends the frame and sends it; a response composed on an AP waits for the BSP's frame_send_composed(). */
void frame_close(void);
void frame_send_composed(void);
void frame_error(uint32_t id, enum error_kind kind, const char *format, ...) PRINTF_LIKE(3, 4);
/* Ends a frame cut short by a bugcheck, so the record starts on a line of its own. */
void frame_abandon(void);

/* Commands. Each family's agent file registers its own with AGENT_COMMAND; the table is the
 * linker section .agent_commands (kernel.ld), so no central list needs editing. */
struct command {
	const char *name;
	size_t name_length; /* compared first: under nested KVM each guest instruction costs ~0.6 us */
	const char *signature; /* one letter per value: i integer, b bytes */
	const char *usage;
	void (*run)(const struct request *request);
};

#define AGENT_COMMAND(name_, signature_, usage_, run_) \
	static const struct command command_##run_ = {name_, sizeof(name_) - 1, signature_, usage_, run_}; \
	static const struct command *const command_entry_##run_ \
		__attribute__((used, section(".agent_commands"))) = &command_##run_

const struct command *command_find(const char *name, size_t length);

/*
 * Leak accounting: a reporter writes, with frame_decimal(), one key per kind of object its family
 * has handed out and not taken back ("<family>_<what>"; zero when nothing is outstanding). The
 * `outstanding` command answers with every registered reporter's keys.
 */
#define OUTSTANDING_REPORTER(fn) \
	static void (*const reporter_entry_##fn)(void) __attribute__((used, section(".outstanding_reporters"))) = fn
void outstanding_report(void);

/* Argument checks shared by the family files: each answers bad-argument and returns false. */
bool argument_fits_ulong(const struct request *r, const char *what, uint64_t value);
bool argument_at_most(const struct request *r, const char *what, uint64_t value, uint64_t max);
/* The keys of hello and !hello. */
void hello_keys(void);
