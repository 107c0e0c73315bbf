/* The mailbox: requests and responses in RAM the host maps, and one COM2 byte each way to ring. */
#include "kstring.h"
#include "layout.h"
#include "paging.h"
#include "protocol.h"
#include "uart.h"
#include "x86.h"

#define MAILBOX_MAGIC 0x58424D4Du /* "MMBX" */
#define RESPONSE_CAPACITY 0x10000u

/* The host reads and writes these offsets (harness/agent/mailbox.py): the layout is the protocol's. */
struct mailbox {
	uint32_t magic;
	uint32_t version;
	uint32_t request_capacity;
	uint32_t response_capacity;
	volatile uint32_t request_sequence; /* host: one more per request */
	volatile uint32_t request_length;   /* host */
	volatile uint32_t response_limit;   /* host: how much of the response area to use; 0 is all */
	volatile uint32_t response_sequence; /* agent: the request_sequence it answered */
	volatile uint32_t response_length;  /* agent */
	uint8_t header_rest[PAGE_SIZE - 9 * sizeof(uint32_t)];
	char request[REQUEST_MAX];
	char response[RESPONSE_CAPACITY];
};
_Static_assert(__builtin_offsetof(struct mailbox, request) == PAGE_SIZE, "request area on page 1");
_Static_assert(__builtin_offsetof(struct mailbox, response) == PAGE_SIZE + REQUEST_MAX, "response area");

static struct mailbox mailbox ALIGNED(PAGE_SIZE);
/* The request is parsed from a private copy, so the host cannot change it under the parser. */
static char request_copy[MAILBOX_REQUEST_MAX];
static uint32_t served_sequence;
static bool responding;

void mailbox_init(void)
{
	mailbox.magic = MAILBOX_MAGIC;
	mailbox.version = PROTOCOL_VERSION;
	mailbox.request_capacity = MAILBOX_REQUEST_MAX;
	mailbox.response_capacity = RESPONSE_CAPACITY;
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
	responding = true;
	uint32_t request_length = mailbox.request_length;
	if (request_length > MAILBOX_REQUEST_MAX)
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
	*limit = host_limit && host_limit < RESPONSE_CAPACITY ? host_limit : RESPONSE_CAPACITY;
	return mailbox.response;
}

void mailbox_publish(size_t length)
{
	mailbox.response_length = (uint32_t)length;
	asm volatile("" ::: "memory"); /* the response is in place before its sequence says so */
	mailbox.response_sequence = served_sequence;
	uart_put(COM2_PORT, DOORBELL_RESPONSE);
}

void mailbox_end_request(void)
{
	responding = false;
}
