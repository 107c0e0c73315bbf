/* Request lines from COM2, fed a byte at a time into one bounded buffer. */
#include "protocol.h"

/* A request's text, its newline excluded. */
static char line_buffer[REQUEST_MAX - 1];
static size_t used;
static bool started; /* a byte of this line has arrived, kept or discarded */
static bool oversized;

bool line_in_progress(void)
{
	return started;
}

enum line_status line_feed(uint8_t byte, const char **line, size_t *length)
{
	if (!started && byte == DOORBELL_REQUEST)
		return LINE_DOORBELL;
	if (byte != '\n') {
		started = true;
		if (used < sizeof(line_buffer))
			line_buffer[used++] = (char)byte;
		else
			oversized = true; /* keep discarding up to the newline */
		return LINE_INCOMPLETE;
	}
	size_t complete = used;
	bool was_oversized = oversized;
	used = 0;
	started = false;
	oversized = false;
	if (was_oversized)
		return LINE_OVERSIZED;
	if (complete && line_buffer[complete - 1] == '\r')
		complete--;
	*line = line_buffer;
	*length = complete;
	return LINE_COMPLETE;
}
