/* UTF-8: validation, and the repair that replaces every byte not part of a valid sequence
 * (a character cut by a token limit, bytes a model produced) with U+FFFD, so that text a
 * model wrote can go into JSON. */
#ifndef TD_UTF8_H
#define TD_UTF8_H

#include <stddef.h>

/* 1 when s[0..n) is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF);
 * else 0 with *bad the offset of the first invalid sequence. */
int td_utf8_valid(const unsigned char *s, size_t n, size_t *bad);
/* Writes s[0..n) repaired into dst (room for 3 * n + 1 bytes), NUL-terminated; returns
 * the length written. */
size_t td_utf8_repair(const char *s, size_t n, char *dst);

#endif
