/* The byte-level tokenizer: token id = byte value (0..255), plus <|endoftext|> = 256 as a
 * document separator. It is written as a Hugging Face tokenizer.json (model type BPE with
 * no merges, ByteLevel pre-tokenizer and decoder, GPT-2's byte-to-unicode alphabet), so the
 * `tokenizers` package loads it and encodes identically. The trained BPE tokenizer of
 * `tandem prep` (issue 3) generalizes this with merges. */
#ifndef TD_BYTETOK_H
#define TD_BYTETOK_H

#include <stddef.h>
#include <stdint.h>

#define TD_BYTETOK_EOT 256
#define TD_BYTETOK_VOCAB 257

/* Encodes `len` bytes of text into ids (ids must hold len entries); returns the count. */
size_t td_bytetok_encode(const char *text, size_t len, int32_t *ids);
/* Decodes ids into bytes (out must hold n + 1 bytes; NUL-terminated); ids that are not
 * bytes (the separator, or ids >= 257 of a larger model vocabulary) are skipped. */
size_t td_bytetok_decode(const int32_t *ids, size_t n, char *out);
/* A newly allocated tokenizer.json text (caller frees). */
char *td_bytetok_hf_json(void);
/* 1 when the tokenizer.json text describes this byte-level tokenizer. */
int td_bytetok_is_bytelevel_json(const char *json);

#endif
