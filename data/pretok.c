/* GPT-2 pre-tokenizer (see pretok.h). */
#include "data/pretok.h"

#include <stdint.h>
#include <utf8proc.h>

enum { CL_OTHER = 0, CL_LETTER = 1, CL_NUMBER = 2, CL_SPACE = 3 };

static int is_white_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static unsigned char g_ascii[128];
static int g_ascii_ready;

static int classify_cp(int32_t c) {
    if (is_white_space(c)) return CL_SPACE;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
        return CL_LETTER;
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
        return CL_NUMBER;
    default:
        return CL_OTHER;
    }
}

/* Class and byte length of the character at s[0..n). */
static inline int next_char(const unsigned char *s, size_t n, int *len) {
    if (s[0] < 0x80) {
        *len = 1;
        return g_ascii[s[0]];
    }
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(s, (utf8proc_ssize_t)(n < 4 ? n : 4), &cp);
    if (k <= 0) { /* invalid UTF-8: one byte, "other" */
        *len = 1;
        return CL_OTHER;
    }
    *len = (int)k;
    return classify_cp(cp);
}

static void init_ascii(void) {
    for (int c = 0; c < 128; c++)
        g_ascii[c] = (unsigned char)classify_cp(c);
    g_ascii_ready = 1;
}

/* Length of the run of characters of class `cl` starting at i. */
static size_t run(const unsigned char *s, size_t len, size_t i, int cl) {
    size_t j = i;
    while (j < len) {
        int l, c = next_char(s + j, len - j, &l);
        if (c != cl) break;
        j += (size_t)l;
    }
    return j;
}

void td_pretok_split(const char *text, size_t len, td_pretok_fn cb, void *ctx) {
    if (!g_ascii_ready) init_ascii();
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        /* contractions: 's 't 'm 'd 're 've 'll */
        if (s[i] == '\'' && i + 1 < len) {
            unsigned char a = s[i + 1], b = i + 2 < len ? s[i + 2] : 0;
            size_t k = 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd')
                k = 2;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                k = 3;
            if (k) {
                cb(text + i, k, ctx);
                i += k;
                continue;
            }
        }
        int l0, c0 = next_char(s + i, len - i, &l0);
        size_t start = i, body = i;
        int cl = c0;
        if (s[i] == ' ' && i + 1 < len) {
            int l1, c1 = next_char(s + i + 1, len - i - 1, &l1);
            if (c1 != CL_SPACE) { /* " ?X+" with the optional space */
                body = i + 1;
                cl = c1;
            }
        }
        if (cl != CL_SPACE) {
            size_t end = run(s, len, body, cl);
            cb(text + start, end - start, ctx);
            i = end;
            continue;
        }
        /* white space: \s+(?!\S) keeps the last character for the next token when a
         * non-space follows a run of two or more; a single one stands alone (\s+) */
        size_t end = run(s, len, i, CL_SPACE);
        if (end < len) {
            size_t last = end, k = i, prev = i;
            while (k < end) { /* find the start of the run's last character */
                int l;
                next_char(s + k, end - k, &l);
                prev = k;
                k += (size_t)l;
            }
            last = prev;
            if (last > i) end = last;
        }
        cb(text + i, end - i, ctx);
        i = end;
    }
}
