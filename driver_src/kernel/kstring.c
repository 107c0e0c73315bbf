/* String functions; rep-string instructions, so the compiler cannot turn them back into calls. Eight
 * bytes per step: nested KVM here emulates each step, and byte steps made zeroing the PFN database
 * most of a boot. */
#include "kstring.h"
#include <stdint.h>

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;
	uint64_t pattern = 0x0101010101010101ul * (uint8_t)c;
	size_t words = n / 8, rest = n % 8;
	asm volatile("rep stosq" : "+D"(d), "+c"(words) : "a"(pattern) : "memory");
	asm volatile("rep stosb" : "+D"(d), "+c"(rest) : "a"(pattern) : "memory");
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;
	size_t words = n / 8, rest = n % 8;
	asm volatile("rep movsq" : "+D"(d), "+S"(src), "+c"(words) : : "memory");
	asm volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(rest) : : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

void *memchr(const void *s, int c, size_t n)
{
	const unsigned char *p = s;
	for (size_t i = 0; i < n; i++)
		if (p[i] == (unsigned char)c)
			return (void *)(p + i);
	return NULL;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}
