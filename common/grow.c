/* Checked growth of realloc'd arrays (see grow.h). */
#include "common/grow.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Reallocates *p to n elements. The pointer is read and written with memcpy: the caller's
 * array has its own pointer type, and going through a void * lvalue would be a type pun. */
static td_status resize(void **p, size_t *cap, size_t n, size_t elem) {
    if (elem == 0 || n > SIZE_MAX / elem)
        return td_error_set(TD_ERR_NOMEM,
                            "out of memory: %zu elements of %zu bytes exceed the address space", n,
                            elem);
    void *old, *q;
    memcpy(&old, p, sizeof old);
    q = realloc(old, n * elem);
    if (!q) return td_error_set(TD_ERR_NOMEM, "out of memory allocating %zu bytes", n * elem);
    memcpy(p, &q, sizeof q);
    *cap = n;
    return TD_OK;
}

td_status td_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return TD_OK;
    size_t n = *cap <= SIZE_MAX / 2 ? 2 * *cap : need;
    if (n < need) n = need;
    if (n < 8) n = 8;
    /* near the top of size_t the doubled size may not fit where `need` itself does */
    if (elem && n > SIZE_MAX / elem && need <= SIZE_MAX / elem) n = need;
    return resize(p, cap, n, elem);
}

td_status td_grow_exact(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return TD_OK;
    return resize(p, cap, need, elem);
}

_Noreturn void td_grow_fail(const char *file, int line) {
    td_log_write(TD_LOG_LVL_ERROR, file, line, "%s", td_error_message());
    abort();
}
