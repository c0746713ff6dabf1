/* GPT-2's pre-tokenizer: the split that Hugging Face's ByteLevel pre-tokenizer makes with
 * use_regex = true, i.e. the regular expression
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * implemented as a hand-written scanner over UTF-8 (letters, numbers and white space by
 * Unicode category from utf8proc; \s is Unicode White_Space). A byte that is not part of
 * valid UTF-8 counts as one "other" character, so any byte string splits and the pieces
 * concatenate back to the input. */
#ifndef TD_PRETOK_H
#define TD_PRETOK_H

#include <stddef.h>

/* Calls cb for each piece [p, p + n) of text[0..len), in order. */
typedef void (*td_pretok_fn)(const char *p, size_t n, void *ctx);
void td_pretok_split(const char *text, size_t len, td_pretok_fn cb, void *ctx);

#endif
