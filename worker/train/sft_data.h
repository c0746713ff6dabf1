/* Chat data prepared once (tandem prep --chat): conversations tokenized with a base's
 * tokenizer and stored with their loss masks, so that fine-tuning runs on big sets start
 * without tokenizing (docs/formats.md, "Prepared chat data").
 *
 * A directory holds chat.json -- {"format": "tandem-chat-v1", "tokenizer_sha256", "splits":
 * {NAME: {"file", "source", "source_sha256", "examples", "tokens", "counted", "longest"}}}
 * -- and one NAME.safetensors per split: "ids" (I32, all examples' tokens one after another),
 * "mask" (U8, 1 where the loss counts the token), "offsets" (I64, examples + 1: example i is
 * [offsets[i], offsets[i + 1])) and "lines" (I64: each example's line in its source). */
#ifndef TD_SFT_DATA_H
#define TD_SFT_DATA_H

#include "common/status.h"
#include "data/chat.h"

/* Writes set as dir/NAME.safetensors. */
td_status td_sft_prepared_write(const td_sft_set *set, const char *dir, const char *name);
/* Writes dir/chat.json for the splits written (names[i] from sources[i], with their sets). */
td_status td_sft_prepared_manifest(const char *dir, const char *tokenizer_sha256,
                                   const char *const *names, const char *const *sources,
                                   const td_sft_set *const *sets, int n);
/* 1 when dir holds prepared chat data (a chat.json). */
int td_sft_is_prepared(const char *dir);
/* Loads split `name` of prepared dir into out, applying the length policy as the JSON Lines
 * loader does. The data must have been tokenized by the tokenizer whose tokenizer.json has
 * sha256 tokenizer_sha256 (an error names both otherwise). TD_ERR_NOTFOUND when there is no
 * such split. */
td_status td_sft_prepared_load(const char *dir, const char *name, const char *tokenizer_sha256,
                               int max_tokens, td_sft_overlong policy, td_sft_set *out);

#endif
