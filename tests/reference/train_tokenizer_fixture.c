/* Trains the tokenizer fixture with tandem's own BPE trainer (td_bpe_train) and writes it
 * as tokenizer.json. Run by make_tokenizer_fixture.py, which compiles it against the build
 * tree's static libraries:
 *
 *     train_tokenizer_fixture OUT.json VOCAB_SIZE FILE...
 *
 * The files are read in the order given; each is split into documents at lines that are
 * exactly "%" (the fortune format) and every document's pre-tokens are counted, with the
 * default special tokens cut out. Training is deterministic, so the same files and
 * vocabulary size give a byte-identical tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fsutil.h"
#include "data/bpe.h"

static void add_documents(td_bpe_counts *c, const td_bpe *sp, const char *text, size_t len) {
    size_t start = 0, i = 0;
    while (i <= len) {
        /* a line "%\n" (or "%" at the end) closes a document */
        int at_line = i == 0 || text[i - 1] == '\n';
        if (i == len || (at_line && text[i] == '%' && (i + 1 == len || text[i + 1] == '\n'))) {
            if (i > start) td_bpe_counts_add_text(c, sp, text + start, i - start);
            if (i == len) break;
            i += i + 1 < len ? 2 : 1;
            start = i;
            continue;
        }
        i++;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s OUT.json VOCAB_SIZE FILE...\n", argv[0]);
        return 2;
    }
    td_bpe *sp = NULL;
    if (td_bpe_new_bytes(NULL, &sp) != TD_OK) {
        fprintf(stderr, "%s\n", td_error_message());
        return 1;
    }
    td_bpe_counts counts;
    td_bpe_counts_init(&counts);
    size_t total = 0;
    for (int i = 3; i < argc; i++) {
        char *text;
        size_t len;
        if (td_fs_read_file(argv[i], &text, &len) != TD_OK) {
            fprintf(stderr, "%s\n", td_error_message());
            return 1;
        }
        add_documents(&counts, sp, text, len);
        total += len;
        free(text);
    }
    td_bpe_train_opts opts = {.vocab_size = atoi(argv[2]), .min_frequency = 2};
    td_bpe *t = NULL;
    if (td_bpe_train(&counts, &opts, &t) != TD_OK) {
        fprintf(stderr, "%s\n", td_error_message());
        return 1;
    }
    char *json = td_bpe_to_json(t);
    if (td_fs_write_file_atomic(argv[1], json, strlen(json)) != TD_OK) {
        fprintf(stderr, "%s\n", td_error_message());
        return 1;
    }
    printf("trained on %zu bytes (%zu distinct pre-tokens): vocab %d, wrote %s (%zu bytes)\n",
           total, counts.words.count, td_bpe_vocab_size(t), argv[1], strlen(json));
    free(json);
    td_bpe_free(&t);
    td_bpe_free(&sp);
    td_bpe_counts_deinit(&counts);
    return 0;
}
