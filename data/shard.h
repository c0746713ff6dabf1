/* Token shards in llm.c's layout: a header of 256 little-endian int32 — [0] magic
 * (20240520 for uint16 tokens, 20240801 for uint32), [1] version (1 resp. 7), [2] token
 * count — followed by the tokens. Opening maps the file and checks magic, version and that
 * the size matches the count. */
#ifndef TD_SHARD_H
#define TD_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#define TD_SHARD_MAGIC_U16 20240520
#define TD_SHARD_MAGIC_U32 20240801
#define TD_SHARD_HEADER_INTS 256

typedef struct {
    char path[1024];
    const unsigned char *map;
    size_t map_len;
    const void *tokens; /* after the header */
    size_t count;
    int token_bytes; /* 2 or 4 */
} td_shard;

td_status td_shard_open(const char *path, td_shard *out);
void td_shard_close(td_shard *s);
static inline int32_t td_shard_token(const td_shard *s, size_t i) {
    return s->token_bytes == 2 ? (int32_t)((const uint16_t *)s->tokens)[i]
                               : (int32_t)((const uint32_t *)s->tokens)[i];
}
/* Writes `n` tokens; token_bytes 2 (each token must be < 65536) or 4. Atomic. */
td_status td_shard_write(const char *path, const int32_t *tokens, size_t n, int token_bytes);

#endif
