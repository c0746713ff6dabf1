/* tokenizer.json files that once crashed the loader (found by scripts/fuzz.sh) are now
 * refused with a message: a vocab id out of int range, a negative added-token id, two added
 * tokens sharing an id with different contents, a non-numeric id. A valid minimal file
 * still loads and round-trips. */
#include <string.h>

#include "data/bpe.h"
#include "tests/test.h"

static void refuse(const char *label, const char *json, const char *phrase) {
    td_bpe *t = NULL;
    td_status s = td_bpe_from_json(json, strlen(json), label, &t);
    printf("  %-32s -> %s\n", label, s == TD_OK ? "loaded" : td_error_message());
    CHECK(s == TD_ERR_FORMAT, "%s: want a format error, got %d", label, (int)s);
    CHECK(t == NULL, "%s: no tokenizer returned on failure", label);
    CHECK(strstr(td_error_message(), phrase) != NULL, "%s: message lacks \"%s\"", label, phrase);
    td_bpe_free(&t);
    td_error_clear();
}

/* A valid byte-level vocabulary of 256 entries, as JSON members. */
static void byte_vocab(char *out, size_t n) {
    /* GPT-2 byte map: printable bytes map to themselves, others to U+0100 + k */
    size_t k = 0;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = keep ? b : 256 + extra++;
        char s[8];
        if (cp == '"' || cp == '\\')
            snprintf(s, sizeof s, "\\%c", cp);
        else if (cp < 0x80)
            snprintf(s, sizeof s, "%c", cp);
        else
            snprintf(s, sizeof s, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F));
        k += (size_t)snprintf(out + k, n - k, "%s\"%s\": %d", b ? ", " : "", s, b);
    }
}

int main(void) {
    static char vocab[8192], json[16384];
    byte_vocab(vocab, sizeof vocab);
    const char *pre = "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}";
    snprintf(json, sizeof json,
             "{%s, \"added_tokens\": [{\"id\": 256, \"content\": \"<|endoftext|>\"}], "
             "\"model\": {\"type\": \"BPE\", \"vocab\": {%s}, \"merges\": []}}",
             pre, vocab);
    td_bpe *t = NULL;
    CHECK(td_bpe_from_json(json, strlen(json), "valid", &t) == TD_OK, "valid file: %s",
          td_error_message());
    if (t) {
        int32_t *ids = NULL;
        size_t cap = 0, ocap = 0;
        char *out = NULL;
        size_t n = td_bpe_encode(t, "ab<|endoftext|>c", 16, &ids, &cap);
        CHECK(n == 4 && ids[2] == 256, "specials split out (n=%zu)", n);
        td_bpe_decode(t, ids, n, &out, &ocap);
        CHECK(!strcmp(out, "ab<|endoftext|>c"), "round trip: %s", out);
        free(ids);
        free(out);
        td_bpe_free(&t);
    }
    refuse("vocab id 1e10",
           "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
           "\"vocab\": {\"a\": 1e10}, \"merges\": []}}",
           "no valid id");
    refuse("vocab id not a number",
           "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", "
           "\"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
           "no valid id");
    snprintf(json, sizeof json,
             "{%s, \"added_tokens\": [{\"id\": -1, \"content\": \"<x>\"}], "
             "\"model\": {\"type\": \"BPE\", \"vocab\": {%s}, \"merges\": []}}",
             pre, vocab);
    refuse("negative added-token id", json, "malformed added token");
    snprintf(json, sizeof json,
             "{%s, \"added_tokens\": [{\"id\": 300, \"content\": \"<x\"}, {\"id\": 300, "
             "\"content\": \"<|endoftext|>\"}], \"model\": {\"type\": \"BPE\", \"vocab\": {%s}, "
             "\"merges\": []}}",
             pre, vocab);
    refuse("two added tokens, one id", json, "share id 300");
    return test_done("test_tokenizer_json");
}
