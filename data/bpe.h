/* Byte-level BPE: training, encoding, decoding, and the Hugging Face tokenizer.json form.
 *
 * Ids of a tokenizer trained here: 0..255 are the bytes, then the special tokens
 * (<|endoftext|> = 256 first), then one id per merge in merge order. A tokenizer loaded
 * from a tokenizer.json (--tokenizer FILE) keeps that file's ids. Text is split by the
 * GPT-2 pre-tokenizer (pretok.h) after cutting out special tokens that occur literally;
 * each piece's bytes are merged by lowest merge rank (the GPT-2 / `tokenizers` rule).
 * Encoding works on arbitrary bytes: invalid UTF-8 bytes stay single-byte tokens, so
 * decode(encode(x)) == x for every byte string. */
#ifndef TD_BPE_H
#define TD_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "common/hashmap.h"
#include "common/status.h"

typedef struct td_bpe td_bpe;

typedef struct {
    int vocab_size;              /* target size, bytes + specials + merges */
    int min_frequency;           /* stop when the best pair occurs fewer times (default 2) */
    const char *const *specials; /* special tokens, NULL-terminated (NULL = defaults) */
} td_bpe_train_opts;

/* Default special tokens: <|endoftext|>, <|im_start|>, <|im_end|>, <|pad|>. */
extern const char *const td_bpe_default_specials[];

/* Word (pre-token) frequencies gathered from text, the input of training. */
typedef struct {
    td_strmap words; /* piece bytes -> count */
} td_bpe_counts;

void td_bpe_counts_init(td_bpe_counts *c);
void td_bpe_counts_deinit(td_bpe_counts *c);
/* Adds the pre-tokens of text (special tokens in it are not counted as words). */
void td_bpe_counts_add_text(td_bpe_counts *c, const td_bpe *specials_from, const char *text,
                            size_t len);
/* Adds `count` to one word. */
void td_bpe_counts_add(td_bpe_counts *c, const char *word, size_t len, uint64_t count);

/* Trains a tokenizer from word counts; *out owned by the caller (td_bpe_free). */
td_status td_bpe_train(const td_bpe_counts *counts, const td_bpe_train_opts *opts, td_bpe **out);

/* A tokenizer with no merges (pure bytes + specials); used to split specials while counting. */
td_status td_bpe_new_bytes(const char *const *specials, td_bpe **out);

/* Loads a Hugging Face tokenizer.json (model BPE, ByteLevel pre-tokenizer); fails with a
 * message naming what is unsupported. `where` labels messages. */
td_status td_bpe_from_json(const char *json, size_t len, const char *where, td_bpe **out);
td_status td_bpe_load(const char *path, td_bpe **out);
/* tokenizer.json text (caller frees). */
char *td_bpe_to_json(const td_bpe *t);
void td_bpe_free(td_bpe **t);

int td_bpe_vocab_size(const td_bpe *t);
/* Id of a special token, or -1. */
int td_bpe_special_id(const td_bpe *t, const char *content);

/* Encodes len bytes; ids grows as needed (*ids, *cap owned by caller, realloc'd).
 * Returns the number of ids written. Not thread-safe (uses a per-tokenizer cache). */
size_t td_bpe_encode(td_bpe *t, const char *text, size_t len, int32_t **ids, size_t *cap);
/* The same, appending after the first n ids of *ids; specials 0: special-token text
 * ("<|im_start|>" typed by a user) is encoded as ordinary bytes. Returns the new count. */
size_t td_bpe_encode_append(td_bpe *t, const char *text, size_t len, int specials, int32_t **ids,
                            size_t *cap, size_t n);
/* Decodes ids into bytes; *out (realloc'd, NUL-terminated) owned by caller. Returns the
 * byte count; ids outside the vocabulary are skipped. */
size_t td_bpe_decode(const td_bpe *t, const int32_t *ids, size_t n, char **out, size_t *cap);

#endif
