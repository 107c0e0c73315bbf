#include "raw_access.h"
#include "pagetable.h"

static volatile struct {
	bool active, write;
	uint64_t va, length;
} in_flight;

static void begin(uint64_t va, size_t length, bool write)
{
	in_flight.va = va;
	in_flight.length = length;
	in_flight.write = write;
	in_flight.active = true;
}

void raw_read(uint64_t va, uint8_t *out, size_t length)
{
	begin(va, length, false);
	const volatile uint8_t *src = (const volatile uint8_t *)va;
	for (size_t i = 0; i < length; i++)
		out[i] = src[i];
	in_flight.active = false;
}

void raw_write(uint64_t va, const uint8_t *in, size_t length)
{
	begin(va, length, true);
	volatile uint8_t *dst = (volatile uint8_t *)va;
	for (size_t i = 0; i < length; i++)
		dst[i] = in[i];
	in_flight.active = false;
}

bool raw_access_non_canonical(uint64_t *va, bool *write)
{
	if (!in_flight.active)
		return false;
	uint64_t first = in_flight.va, last = in_flight.va + in_flight.length - 1; /* callers refuse wrapping */
	if (!va_is_canonical(first, paging_levels))
		*va = first;
	else if (!va_is_canonical(last, paging_levels))
		*va = BIT(VA_BITS(paging_levels) - 1); /* the range ran off the top of the lower half */
	else
		return false;
	*write = in_flight.write;
	return true;
}
