/* Document cleaning: fixes what can be fixed (terminal escape sequences, overstriking,
 * stray control characters, CRLF, Unicode normalisation to NFC) and drops documents that
 * fail a quality rule. Every rule is a field of td_clean_rules, documented in
 * docs/prep.md, and the pipeline reports how many documents each rule dropped or fixed. */
#ifndef TD_CLEAN_H
#define TD_CLEAN_H

#include <stddef.h>

typedef enum {
    TD_CLEAN_KEEP = 0,
    TD_CLEAN_INVALID_UTF8,    /* not valid UTF-8 */
    TD_CLEAN_TOO_SHORT,       /* fewer than min_chars characters (after fixing) */
    TD_CLEAN_TOO_LONG,        /* more than max_chars characters */
    TD_CLEAN_FEW_LETTERS,     /* letters (any script) / non-space chars < min_letter_ratio */
    TD_CLEAN_SYMBOLS,         /* symbol chars / non-space chars > max_symbol_ratio */
    TD_CLEAN_REPEATED_LINES,  /* duplicate lines / lines > max_dup_line_frac */
    TD_CLEAN_REPEATED_NGRAMS, /* chars in the most frequent word 3-gram / chars > max_top_ngram_frac
                               */
    TD_CLEAN_NREASONS
} td_clean_reason;

const char *td_clean_reason_name(td_clean_reason r);

typedef struct {
    long min_chars, max_chars;
    double min_letter_ratio, max_symbol_ratio, max_dup_line_frac, max_top_ngram_frac;
    int fix_controls; /* strip escape sequences, overstrikes and control characters */
    int nfc;          /* normalise to NFC */
} td_clean_rules;

/* The defaults documented in docs/prep.md. */
td_clean_rules td_clean_rules_default(void);

typedef struct {
    char *text; /* cleaned text (owned, NUL-terminated), valid when kept */
    size_t len;
    int fixed_escapes, fixed_overstrikes, fixed_controls; /* counts of fixes made */
} td_clean_out;

/* Cleans one document. Returns TD_CLEAN_KEEP with out->text set (caller frees), or the
 * first rule that dropped it (out->text NULL). Never fails on any input bytes. */
td_clean_reason td_clean_doc(const td_clean_rules *r, const char *text, size_t len,
                             td_clean_out *out);

#endif
