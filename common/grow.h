/* Checked growth of realloc'd arrays: the one way tandem makes room in a buffer it appends
 * to. A failed allocation leaves the array and its capacity as they were and returns
 * TD_ERR_NOMEM with a message naming the byte count, so a caller can propagate it like any
 * other status (TD_TRY(TD_GROW(v, cap, n + 1))) and still free what it holds.
 *
 * Capacities are element counts of type size_t; TD_GROW takes the array and its capacity
 * as lvalues and the element size from the array's type. */
#ifndef TD_GROW_H
#define TD_GROW_H

#include <stddef.h>

#include "common/status.h"

/* Ensures *cap >= need elements of `elem` bytes at *p (a realloc'd pointer, possibly NULL).
 * need <= *cap does nothing; otherwise the capacity becomes at least twice the old one (so
 * n appends copy O(n) bytes), at least `need`, and at least 8. */
td_status td_grow(void **p, size_t *cap, size_t need, size_t elem);

/* The same with the new capacity exactly `need`: for buffers sized once, or whose owner
 * bounds them (a request body capped at its limit). */
td_status td_grow_exact(void **p, size_t *cap, size_t need, size_t elem);

/* For the few places whose interface has no way to report a failure (a public function
 * returning a count or a verdict): logs the recorded message with the caller's location and
 * aborts. Never for code that can return a status. */
_Noreturn void td_grow_fail(const char *file, int line);

/* `cap` must be a size_t lvalue: an int capacity is a compile error (incompatible pointer),
 * not a silent truncation. */
#define TD_GROW(ptr, cap, need) td_grow((void **)&(ptr), &(cap), (need), sizeof *(ptr))
#define TD_GROW_EXACT(ptr, cap, need) td_grow_exact((void **)&(ptr), &(cap), (need), sizeof *(ptr))
#define TD_GROW_OR_DIE(ptr, cap, need)                                                             \
    do {                                                                                           \
        if (TD_GROW(ptr, cap, need) != TD_OK) td_grow_fail(__FILE__, __LINE__);                    \
    } while (0)

#endif
