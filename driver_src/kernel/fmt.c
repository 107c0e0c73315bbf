#include <stdbool.h>
#include <stdint.h>
#include "fmt.h"

struct spec {
	bool zero_pad, left;
	unsigned width;
	int precision; /* %.*s: at most this many characters; -1 when not given */
};

static void emit_padded(fmt_sink sink, void *ctx, const struct spec *s, const char *text, unsigned len,
			bool negative)
{
	unsigned total = len + negative;
	unsigned pad = s->width > total ? s->width - total : 0;
	if (!s->left && !s->zero_pad)
		while (pad--)
			sink(ctx, ' ');
	if (negative)
		sink(ctx, '-');
	if (!s->left && s->zero_pad)
		while (pad--)
			sink(ctx, '0');
	for (unsigned i = 0; i < len; i++)
		sink(ctx, text[i]);
	if (s->left)
		while (pad--)
			sink(ctx, ' ');
}

static void emit_number(fmt_sink sink, void *ctx, const struct spec *s, uint64_t value, unsigned base,
			bool upper, bool negative)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char buf[20];
	unsigned n = sizeof(buf);
	do {
		buf[--n] = digits[value % base];
		value /= base;
	} while (value);
	emit_padded(sink, ctx, s, buf + n, sizeof(buf) - n, negative);
}

void fmt_vprint(fmt_sink sink, void *ctx, const char *f, va_list ap)
{
	for (; *f; f++) {
		if (*f != '%') {
			sink(ctx, *f);
			continue;
		}
		struct spec s = {.precision = -1};
		for (;; f++) {
			if (f[1] == '0')
				s.zero_pad = true;
			else if (f[1] == '-')
				s.left = true;
			else
				break;
		}
		while (f[1] >= '0' && f[1] <= '9')
			s.width = s.width * 10 + (unsigned)(*++f - '0');
		if (f[1] == '.' && f[2] == '*') {
			s.precision = va_arg(ap, int);
			f += 2;
		}
		unsigned longs = 0;
		while (f[1] == 'l' || f[1] == 'z') {
			longs++;
			f++;
		}
		char conv = *++f;
		uint64_t u;
		int64_t d;
		switch (conv) {
		case 'c': {
			char c = (char)va_arg(ap, int);
			emit_padded(sink, ctx, &s, &c, 1, false);
			break;
		}
		case 's': {
			const char *str = va_arg(ap, const char *);
			unsigned len = 0;
			while (str[len] && (s.precision < 0 || len < (unsigned)s.precision))
				len++;
			emit_padded(sink, ctx, &s, str, len, false);
			break;
		}
		case 'd':
			d = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
			emit_number(sink, ctx, &s, d < 0 ? -(uint64_t)d : (uint64_t)d, 10, false, d < 0);
			break;
		case 'u':
		case 'x':
		case 'X':
			u = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			emit_number(sink, ctx, &s, u, conv == 'u' ? 10 : 16, conv == 'X', false);
			break;
		case '%':
			sink(ctx, '%');
			break;
		default: /* unknown conversion: show it rather than guess */
			sink(ctx, '%');
			if (!conv)
				return;
			sink(ctx, conv);
		}
	}
}
