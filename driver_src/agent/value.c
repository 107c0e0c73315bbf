/* Values are typed by their spelling: integer, boolean, "string", #bytes. */
#include "kstring.h"
#include "protocol.h"

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* 0x and 1 to 16 hex digits, or 1 to 20 decimal digits; anything above 2^64-1 does not parse. */
static bool parse_integer(const char *t, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n > 2 && t[0] == '0' && t[1] == 'x') {
		if (n - 2 > 16)
			return false;
		for (size_t i = 2; i < n; i++) {
			int d = hex_digit(t[i]);
			if (d < 0)
				return false;
			v = v << 4 | (uint64_t)d;
		}
	} else {
		if (n < 1 || n > 20)
			return false;
		for (size_t i = 0; i < n; i++) {
			if (t[i] < '0' || t[i] > '9')
				return false;
			uint64_t d = (uint64_t)(t[i] - '0');
			if (v > (UINT64_MAX - d) / 10)
				return false;
			v = v * 10 + d;
		}
	}
	*out = v;
	return true;
}

/* Printable ASCII other than " and \, plus \xHH escapes. */
static bool valid_string(const char *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '"')
			return false;
		if (t[i] != '\\')
			continue;
		if (i + 3 >= n || t[i + 1] != 'x' || hex_digit(t[i + 2]) < 0 || hex_digit(t[i + 3]) < 0)
			return false;
		i += 3;
	}
	return true;
}

static bool valid_hex(const char *t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (hex_digit(t[i]) < 0)
			return false;
	return n % 2 == 0;
}

bool value_parse(const char *t, size_t n, struct value *v)
{
	*v = (struct value){0};
	if (t[0] == '"') {
		v->type = VALUE_STRING;
		v->text = t + 1;
		v->length = n - 2;
		return n >= 2 && t[n - 1] == '"' && valid_string(v->text, v->length);
	}
	if (t[0] == '#') {
		v->type = VALUE_BYTES;
		v->text = t + 1;
		v->length = n - 1;
		return valid_hex(v->text, v->length);
	}
	if ((n == 4 && !memcmp(t, "true", 4)) || (n == 5 && !memcmp(t, "false", 5))) {
		v->type = VALUE_BOOLEAN;
		v->integer = n == 4;
		return true;
	}
	v->type = VALUE_INTEGER;
	return parse_integer(t, n, &v->integer);
}

void bytes_decode(const struct value *v, uint8_t *out)
{
	for (size_t i = 0; i < v->length / 2; i++)
		out[i] = (uint8_t)(hex_digit(v->text[2 * i]) << 4 | hex_digit(v->text[2 * i + 1]));
}
