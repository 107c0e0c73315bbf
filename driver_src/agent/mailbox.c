/*
 * The mailbox: requests and responses in RAM the host maps. While requests flow, both sides poll it
 * and no byte crosses COM2; an agent that found nothing to do for a while halts, and the host then
 * wakes it with one doorbell byte on COM2 (docs/agent-protocol.md, "Mailbox").
 */
#include "kstring.h"
#include "layout.h"
#include "paging.h"
#include "protocol.h"
#include "smp.h"
#include "uart.h"
#include "x86.h"

#define MAILBOX_MAGIC 0x58424D4Du /* "MMBX" */

enum agent_state { AGENT_POLLING, AGENT_HALTED };
enum host_state { HOST_POLLING, HOST_WAITING };

/* The host reads and writes these offsets (harness/agent/mailbox.py): the layout is the protocol's. */
struct mailbox {
	uint32_t magic;
	uint32_t version;
	uint32_t request_capacity;
	uint32_t response_capacity;
	volatile uint32_t request_sequence;  /* host: one more per request */
	volatile uint32_t request_length;    /* host */
	volatile uint32_t response_limit;    /* host: how much of the response area to use; 0 is all */
	volatile uint32_t response_sequence; /* agent: the request_sequence it answered */
	volatile uint32_t response_length;   /* agent */
	volatile uint32_t agent_state;       /* agent: halted means "ring me" */
	volatile uint32_t host_state;        /* host: waiting means "ring me" */
	volatile uint32_t agent_quiet_us;    /* host: poll this long after the last work, then halt; 0: our own */
	uint8_t header_rest[PAGE_SIZE - 12 * sizeof(uint32_t)];
	char request[MAILBOX_REQUEST_CAPACITY];
	char response[MAILBOX_RESPONSE_CAPACITY];
};
_Static_assert(__builtin_offsetof(struct mailbox, agent_state) == 0x24, "protocol offset");
_Static_assert(__builtin_offsetof(struct mailbox, agent_quiet_us) == 0x2C, "protocol offset");
_Static_assert(__builtin_offsetof(struct mailbox, request) == PAGE_SIZE, "request area on page 1");
_Static_assert(__builtin_offsetof(struct mailbox, response) == PAGE_SIZE + MAILBOX_REQUEST_CAPACITY,
	       "response area after the request area");

static struct mailbox mailbox ALIGNED(PAGE_SIZE) __attribute__((used));

/* Where the mailbox is, for a host that waits for the hello there (harness/build.py reads it):
 * an ELF note named "mmhil", type 1, holding the mailbox's physical address. */
asm(".pushsection .note.mmhil, \"a\", @note\n"
    "\t.balign 4\n"
    "\t.long 6, 8, 1\n"
    "\t.asciz \"mmhil\"\n"
    "\t.balign 4\n"
    "\t.quad mailbox - 0xFFFFF80000000000\n"
    "\t.popsection");
_Static_assert(KERNEL_VIRT_OFFSET == 0xFFFFF80000000000ull, "the note's physical address");

/* The request is parsed from a private copy, so the host cannot change it under the parser. */
static char request_copy[MAILBOX_REQUEST_CAPACITY];
static uint32_t served_sequence;
static bool responding;
static size_t response_used; /* bytes of whole frames in the response area */

void mailbox_init(void)
{
	mailbox.version = PROTOCOL_VERSION;
	mailbox.request_capacity = MAILBOX_REQUEST_CAPACITY;
	mailbox.response_capacity = MAILBOX_RESPONSE_CAPACITY;
}

void mailbox_compose_hello(void)
{
	responding = true;
	response_used = 0;
}

void mailbox_open(void)
{
	bool hello_inside = responding;
	responding = false;
	mailbox.response_length = (uint32_t)response_used;
	asm volatile("" ::: "memory"); /* the header and the hello are in place before the magic says so */
	mailbox.magic = MAILBOX_MAGIC;
	if (hello_inside) /* the host blocks on COM2 until this one byte */
		uart_put(COM2_PORT, DOORBELL_RESPONSE);
}

uint64_t mailbox_physical_address(void)
{
	return image_virt_to_phys(&mailbox);
}

bool mailbox_request_pending(void)
{
	return mailbox.request_sequence != served_sequence;
}

bool mailbox_take_request(const char **text, size_t *length)
{
	served_sequence = mailbox.request_sequence;
	asm volatile("" ::: "memory"); /* the sequence is read before the request it announces */
	responding = true;
	response_used = 0;
	uint32_t request_length = mailbox.request_length;
	if (request_length > MAILBOX_REQUEST_CAPACITY)
		return false;
	memcpy(request_copy, mailbox.request, request_length);
	*text = request_copy;
	*length = request_length;
	return true;
}

bool mailbox_responding(void)
{
	return responding;
}

char *mailbox_response_area(size_t *limit)
{
	uint32_t host_limit = mailbox.response_limit;
	size_t usable = host_limit && host_limit < MAILBOX_RESPONSE_CAPACITY ? host_limit : MAILBOX_RESPONSE_CAPACITY;
	*limit = usable > response_used ? usable - response_used : 0;
	return mailbox.response + response_used;
}

void mailbox_frame_complete(size_t length)
{
	response_used += length;
}

void mailbox_end_request(void)
{
	if (!responding)
		return;
	responding = false;
	mailbox.response_length = (uint32_t)response_used;
	asm volatile("" ::: "memory"); /* the answers are in place before the sequence says so */
	mailbox.response_sequence = served_sequence;
	/* Store, then load: without the fence the host's "waiting" could be missed. */
	asm volatile("mfence" ::: "memory");
	if (mailbox.host_state == HOST_WAITING)
		uart_put(COM2_PORT, DOORBELL_RESPONSE);
}

bool mailbox_agent_halting(void)
{
	mailbox.agent_state = AGENT_HALTED;
	asm volatile("mfence" ::: "memory"); /* the host must see "halted" before we look a last time */
	if (!mailbox_request_pending())
		return true;
	mailbox.agent_state = AGENT_POLLING;
	return false;
}

uint64_t mailbox_quiet_ticks(uint64_t own)
{
	uint64_t asked = mailbox.agent_quiet_us * (TSC_ASSUMED_HZ / 1000000);
	return asked && asked < own ? asked : own;
}

void mailbox_agent_polling(void)
{
	mailbox.agent_state = AGENT_POLLING;
}
