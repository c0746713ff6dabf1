/* libFuzzer target for document cleaning and dedup signatures (data/clean.c, data/dedup.c).
 * Built and run by scripts/fuzz.sh. For every input, td_clean_doc with the default rules
 * must not crash or leak (ASan/LSan report both); a kept document must be valid UTF-8 with
 * out.len == strlen(out.text), and its dedup signature must have Jaccard 1 with itself.
 * A violated property aborts with __builtin_trap() after printing what went wrong. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "data/clean.h"
#include "data/dedup.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *why, const uint8_t *data, size_t size) {
    fprintf(stderr, "fuzz_clean: %s\ninput (%zu bytes):", why, size);
    for (size_t i = 0; i < size && i < 256; i++)
        fprintf(stderr, " %02x", data[i]);
    fprintf(stderr, size > 256 ? " ...\n" : "\n");
    __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static td_clean_rules rules;
    static int ready;
    if (!ready) {
        rules = td_clean_rules_default();
        ready = 1;
    }
    td_clean_out out;
    td_clean_reason why = td_clean_doc(&rules, (const char *)data, size, &out);
    if ((unsigned)why >= TD_CLEAN_NREASONS) fail("td_clean_doc returned no reason", data, size);
    if (why != TD_CLEAN_KEEP) {
        if (out.text) fail("dropped document has out.text set", data, size);
        return 0;
    }
    if (!out.text) fail("kept document has no text", data, size);
    if (out.len != strlen(out.text)) fail("out.len != strlen(out.text)", data, size);
    if (utf8proc_decompose((const utf8proc_uint8_t *)out.text, (utf8proc_ssize_t)out.len, NULL, 0,
                           0) < 0)
        fail("kept text is not valid UTF-8", data, size);
    td_doc_sig sig;
    td_dedup_signature(out.text, out.len, &sig);
    if (td_dedup_jaccard(&sig, &sig) != 1.0) fail("jaccard(sig, sig) != 1", data, size);
    free(out.text);
    return 0;
}
