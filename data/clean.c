/* Document cleaning rules (see clean.h). */
#include "data/clean.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common/grow.h"
#include "common/hashmap.h"

const char *td_clean_reason_name(td_clean_reason r) {
    static const char *n[TD_CLEAN_NREASONS] = {
        "kept",        "invalid_utf8",     "too_short",      "too_long",
        "few_letters", "too_many_symbols", "repeated_lines", "repeated_ngrams"};
    return r < TD_CLEAN_NREASONS ? n[r] : "?";
}

td_clean_rules td_clean_rules_default(void) {
    td_clean_rules r = {.min_chars = 16,
                        .max_chars = 1000000,
                        .min_letter_ratio = 0.5,
                        .max_symbol_ratio = 0.2,
                        .max_dup_line_frac = 0.3,
                        .max_top_ngram_frac = 0.2,
                        .fix_controls = 1,
                        .nfc = 1};
    return r;
}

/* Removes terminal escape sequences (ESC [ params final, ESC ] ... BEL/ST, ESC x),
 * overstrikes (c BS -> nothing: "_\bX" and "X\bX" keep X) and control characters other
 * than tab and newline; turns CRLF and lone CR into LF. Works in place; returns the new
 * length. Operates on bytes: every sequence it removes is ASCII. */
static size_t fix_controls(char *s, size_t n, td_clean_out *o) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0x1B) { /* ESC */
            o->fixed_escapes++;
            if (i + 1 < n && s[i + 1] == '[') { /* CSI: params/intermediates 0x20-0x3F */
                size_t j = i + 2;
                while (j < n && (unsigned char)s[j] >= 0x20 && (unsigned char)s[j] <= 0x3F)
                    j++;
                /* the final byte (0x40-0x7E) ends it; anything else is not part of it */
                i = (j < n && (unsigned char)s[j] >= 0x40 && (unsigned char)s[j] <= 0x7E) ? j
                                                                                          : j - 1;
            } else if (i + 1 < n && s[i + 1] == ']') { /* OSC ... BEL or ESC \, at most 256 */
                size_t j = i + 2, lim = i + 2 + 256 < n ? i + 2 + 256 : n;
                while (j < lim && s[j] != 0x07 && !(s[j] == 0x1B && j + 1 < n && s[j + 1] == '\\'))
                    j++;
                if (j >= lim) { /* unterminated: drop only the ESC ] */
                    i++;
                } else {
                    i = s[j] == 0x1B ? j + 1 : j;
                }
            } else if (i + 1 < n && (unsigned char)s[i + 1] >= 0x20 &&
                       (unsigned char)s[i + 1] <= 0x7E) {
                i++; /* two-byte escape */
            }
            continue;
        }
        if (c == 0x08) { /* backspace: drop it and the character before */
            o->fixed_overstrikes++;
            if (k > 0) {
                /* step back over a whole UTF-8 character */
                do
                    k--;
                while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80);
            }
            continue;
        }
        if (c == '\r') {
            if (i + 1 < n && s[i + 1] == '\n') continue;
            s[k++] = '\n';
            continue;
        }
        if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7F) {
            o->fixed_controls++;
            continue;
        }
        s[k++] = (char)c;
    }
    return k;
}

static int is_space_cp(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ASCII punctuation that ordinary prose uses; the rest of P* and all of S* count as
 * symbols. Punctuation outside ASCII (CJK 。，「」 etc.) is prose punctuation too. */
static int is_symbol_cp(int32_t c) {
    if (c < 0x80)
        return c > 0x20 && c < 0x7F && !strchr(".,;:!?'\"()-`%&$", (int)c) &&
               !((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'));
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_SM || k == UTF8PROC_CATEGORY_SO || k == UTF8PROC_CATEGORY_SK;
}

static int is_letter_cp(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

/* Fraction of non-empty lines that repeat an earlier line. */
static double dup_line_frac(const char *s, size_t n) {
    td_map64 seen;
    td_map64_init(&seen);
    size_t lines = 0, dups = 0, i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && s[e] != '\n')
            e++;
        size_t a = i, b = e;
        while (a < b && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
            b--;
        if (b > a) {
            lines++;
            uint64_t h = td_hash_bytes(s + a, b - a, 7) | 1;
            uint64_t *v = td_map64_get(&seen, h, 1);
            if ((*v)++) dups++;
        }
        i = e + 1;
    }
    td_map64_deinit(&seen);
    return lines >= 3 ? (double)dups / (double)lines : 0.0;
}

/* Share of characters covered by the most frequent word 3-gram (counted with
 * repetitions); 0 for documents under 12 words. */
static double top_ngram_frac(const char *s, size_t n) {
    size_t nw = 0, ws_cap = 0, we_cap = 0;
    size_t *ws = NULL, *we = NULL;
    for (size_t i = 0; i < n;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'))
            i++;
        size_t a = i;
        while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\n')
            i++;
        if (i > a) {
            /* td_clean_doc returns a verdict and "never fails": out of memory ends the process */
            TD_GROW_OR_DIE(ws, ws_cap, nw + 1);
            TD_GROW_OR_DIE(we, we_cap, nw + 1);
            ws[nw] = a;
            we[nw++] = i;
        }
    }
    double frac = 0;
    if (nw >= 12) {
        td_map64 cnt;
        td_map64_init(&cnt);
        uint64_t best = 0;
        size_t best_len = 0;
        for (size_t w = 0; w + 3 <= nw; w++) {
            uint64_t h = td_hash_bytes(s + ws[w], we[w + 2] - ws[w], 11) | 1;
            uint64_t *v = td_map64_get(&cnt, h, 1);
            if (++*v > best) {
                best = *v;
                best_len = we[w + 2] - ws[w];
            }
        }
        td_map64_deinit(&cnt);
        if (best > 1) frac = (double)(best * best_len) / (double)n;
        if (frac > 1) frac = 1;
    }
    free(ws);
    free(we);
    return frac;
}

td_clean_reason td_clean_doc(const td_clean_rules *r, const char *text, size_t len,
                             td_clean_out *out) {
    memset(out, 0, sizeof *out);
    if (utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, NULL, 0, 0) < 0)
        return TD_CLEAN_INVALID_UTF8;
    char *s = malloc(len + 1);
    memcpy(s, text, len);
    size_t n = r->fix_controls ? fix_controls(s, len, out) : len;
    s[n] = 0;
    if (r->nfc) {
        utf8proc_uint8_t *nf = NULL;
        utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nf,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        free(s);
        if (k < 0) return TD_CLEAN_INVALID_UTF8; /* an escape cut a character in two */
        s = (char *)nf;
        n = (size_t)k;
    }
    /* character statistics */
    long chars = 0, nonspace = 0, letters = 0, symbols = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) {
            free(s);
            return TD_CLEAN_INVALID_UTF8;
        }
        i += (size_t)k;
        chars++;
        if (is_space_cp(cp)) continue;
        nonspace++;
        letters += is_letter_cp(cp);
        symbols += is_symbol_cp(cp);
    }
    td_clean_reason why = TD_CLEAN_KEEP;
    if (chars < r->min_chars)
        why = TD_CLEAN_TOO_SHORT;
    else if (chars > r->max_chars)
        why = TD_CLEAN_TOO_LONG;
    else if (nonspace == 0 || (double)letters / (double)nonspace < r->min_letter_ratio)
        why = TD_CLEAN_FEW_LETTERS;
    else if ((double)symbols / (double)nonspace > r->max_symbol_ratio)
        why = TD_CLEAN_SYMBOLS;
    else if (dup_line_frac(s, n) > r->max_dup_line_frac)
        why = TD_CLEAN_REPEATED_LINES;
    else if (top_ngram_frac(s, n) > r->max_top_ngram_frac)
        why = TD_CLEAN_REPEATED_NGRAMS;
    if (why != TD_CLEAN_KEEP) {
        free(s);
        return why;
    }
    out->text = s;
    out->len = n;
    return TD_CLEAN_KEEP;
}
