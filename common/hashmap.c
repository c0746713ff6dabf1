/* Open-addressing hash maps (see hashmap.h). */
#include "common/hashmap.h"

#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/log.h"

void td_map64_init(td_map64 *m) {
    m->cap = 64;
    m->count = 0;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    TD_ASSERT(m->keys && m->vals);
}

void td_map64_deinit(td_map64 *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static void map64_grow(td_map64 *m) {
    td_map64 n = {calloc(m->cap * 2, sizeof(uint64_t)), calloc(m->cap * 2, sizeof(uint64_t)),
                  m->cap * 2, 0};
    TD_ASSERT(n.keys && n.vals);
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) *td_map64_get(&n, m->keys[i], 1) = m->vals[i];
    free(m->keys);
    free(m->vals);
    *m = n;
}

uint64_t *td_map64_get(td_map64 *m, uint64_t key, int insert) {
    TD_ASSERT(key != 0);
    if (insert && 2 * (m->count + 1) > m->cap) map64_grow(m);
    size_t mask = m->cap - 1, i = td_hash_u64(key) & mask;
    while (m->keys[i]) {
        if (m->keys[i] == key) return &m->vals[i];
        i = (i + 1) & mask;
    }
    if (!insert) return NULL;
    m->keys[i] = key;
    m->vals[i] = 0;
    m->count++;
    return &m->vals[i];
}

void td_strmap_init(td_strmap *m) {
    memset(m, 0, sizeof *m);
    m->cap = 64;
    m->slots = malloc(m->cap * sizeof *m->slots);
    TD_ASSERT(m->slots);
    for (size_t i = 0; i < m->cap; i++)
        m->slots[i].len = UINT32_MAX;
}

void td_strmap_deinit(td_strmap *m) {
    free(m->slots);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

static void strmap_grow(td_strmap *m) {
    size_t ncap = m->cap * 2, mask = ncap - 1;
    td_strmap_slot *ns = malloc(ncap * sizeof *ns);
    TD_ASSERT(ns);
    for (size_t i = 0; i < ncap; i++)
        ns[i].len = UINT32_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].len == UINT32_MAX) continue;
        size_t j = m->slots[i].hash & mask;
        while (ns[j].len != UINT32_MAX)
            j = (j + 1) & mask;
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
}

uint64_t *td_strmap_get(td_strmap *m, const char *key, size_t len, int insert) {
    if (insert && 2 * (m->count + 1) > m->cap) strmap_grow(m);
    uint64_t h = td_hash_bytes(key, len, 0);
    size_t mask = m->cap - 1, i = h & mask;
    while (m->slots[i].len != UINT32_MAX) {
        td_strmap_slot *s = &m->slots[i];
        if (s->hash == h && s->len == len && !memcmp(m->arena + s->off, key, len)) return &s->val;
        i = (i + 1) & mask;
    }
    if (!insert) return NULL;
    /* this interface returns a slot, not a status: out of memory here ends the process */
    TD_GROW_OR_DIE(m->arena, m->arena_cap, m->arena_len + len + 1);
    memcpy(m->arena + m->arena_len, key, len);
    m->arena[m->arena_len + len] = 0;
    td_strmap_slot *s = &m->slots[i];
    s->off = (uint32_t)m->arena_len;
    s->len = (uint32_t)len;
    s->hash = h;
    s->val = 0;
    m->arena_len += len + 1;
    m->count++;
    return &s->val;
}
