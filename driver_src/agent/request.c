/* `<id> [cpu=<K>] <command> [<value> ...]`: tokens separated by single spaces. */
#include "kstring.h"
#include "protocol.h"

#define CPU_KEY "cpu="
#define CPU_KEY_LENGTH 4

static bool parse_id(const char *t, size_t n, uint32_t *id)
{
	if (n < 1 || n > 10)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i] < '0' || t[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(t[i] - '0');
	}
	if (v < 1 || v > UINT32_MAX)
		return false;
	*id = (uint32_t)v;
	return true;
}

/* The token at *pos: up to a space, or for a string through its closing quote. */
static bool next_token(const char *line, size_t length, size_t *pos, const char **token, size_t *token_length,
		       const char **why)
{
	size_t start = *pos, end = start;
	if (end < length && line[end] == '"') {
		end++;
		while (end < length && line[end] != '"')
			end++;
		if (end == length) {
			*why = "unterminated string";
			return false;
		}
		end++;
	} else {
		while (end < length && line[end] != ' ')
			end++;
	}
	if (end == start) {
		*why = "empty token: doubled or trailing space";
		return false;
	}
	if (end < length && line[end] != ' ') {
		*why = "a string must end its token";
		return false;
	}
	*token = line + start;
	*token_length = end - start;
	*pos = end;
	return true;
}

bool request_parse(const char *line, size_t length, struct request *r, const char **why)
{
	*r = (struct request){.id = ID_UNREADABLE};
	size_t pos = 0;
	while (pos < length && line[pos] != ' ')
		pos++;
	bool id_read = parse_id(line, pos, &r->id);
	for (size_t i = 0; i < length; i++) {
		if (line[i] < 0x20 || line[i] > 0x7E) {
			*why = "a byte outside 0x20..0x7e";
			return false;
		}
	}
	if (!id_read) {
		*why = length ? "the line does not start with an id from 1 to 4294967295" : "empty line";
		return false;
	}
	/* The CPU token: its value is checked as a value here, against the online CPUs by dispatch(). */
	if (length - pos > CPU_KEY_LENGTH && !memcmp(line + pos + 1, CPU_KEY, CPU_KEY_LENGTH)) {
		pos++;
		const char *token;
		size_t token_length;
		if (!next_token(line, length, &pos, &token, &token_length, why))
			return false;
		if (!value_parse(token + CPU_KEY_LENGTH, token_length - CPU_KEY_LENGTH, &r->cpu)) {
			*why = "the cpu= value does not parse";
			return false;
		}
		r->cpu_given = true;
	}
	if (pos == length) {
		*why = "no command";
		return false;
	}
	while (pos < length) {
		pos++; /* the separating space */
		const char *token;
		size_t token_length;
		if (!next_token(line, length, &pos, &token, &token_length, why))
			return false;
		if (!r->command) {
			r->command = token;
			r->command_length = token_length;
			continue;
		}
		struct value scratch;
		struct value *v = r->count < VALUES_MAX ? &r->values[r->count] : &scratch;
		if (!value_parse(token, token_length, v)) {
			*why = "a value does not parse";
			return false;
		}
		r->count++;
	}
	return true;
}
