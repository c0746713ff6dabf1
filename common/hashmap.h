/* Open-addressing hash maps used by the data pipeline.
 *   td_map64: uint64 key -> uint64 value (key 0 is reserved as "empty"; callers mix it)
 *   td_strmap: byte-string key -> uint64 value; keys are copied into the map's own arena
 * Both grow by doubling at 50 % load; lookups return a pointer to the value slot. */
#ifndef TD_HASHMAP_H
#define TD_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t td_hash_bytes(const void *data, size_t n, uint64_t seed) {
    /* FNV-1a over 8-byte words, then a splitmix finalizer */
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        __builtin_memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h ^= n;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

static inline uint64_t td_hash_u64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

typedef struct {
    uint64_t *keys, *vals;
    size_t cap, count;
} td_map64;

void td_map64_init(td_map64 *m);
void td_map64_deinit(td_map64 *m);
/* Slot of key (inserted with value 0 when absent and `insert`); NULL when absent. */
uint64_t *td_map64_get(td_map64 *m, uint64_t key, int insert);

typedef struct {
    uint32_t off, len; /* key bytes in the arena */
    uint64_t hash, val;
} td_strmap_slot;

typedef struct {
    td_strmap_slot *slots; /* len == UINT32_MAX marks empty */
    size_t cap, count;
    char *arena;
    size_t arena_len, arena_cap;
} td_strmap;

void td_strmap_init(td_strmap *m);
void td_strmap_deinit(td_strmap *m);
uint64_t *td_strmap_get(td_strmap *m, const char *key, size_t len, int insert);
static inline const char *td_strmap_key(const td_strmap *m, const td_strmap_slot *s) {
    return m->arena + s->off;
}

#endif
