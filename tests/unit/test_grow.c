/* td_grow (common/grow.h): growth keeps the contents and at least doubles; a need within
 * the capacity changes nothing; a size that overflows size_t fails with TD_ERR_NOMEM and a
 * message naming the sizes, leaving the array and its capacity as they were; the exact form
 * sizes to the need. */
#include <stdint.h>
#include <string.h>

#include "common/grow.h"
#include "tests/test.h"

int main(void) {
    int32_t *v = NULL;
    size_t cap = 0;

    /* from nothing, then appends one at a time: contents survive every move */
    CHECK(TD_GROW(v, cap, 1) == TD_OK && v && cap >= 1, "first growth: cap %zu", cap);
    size_t n = 0, moves = 0, last = cap;
    for (; n < 1000; n++) {
        REQUIRE(TD_GROW(v, cap, n + 1) == TD_OK, "growth to %zu: %s", n + 1, td_error_message());
        if (cap != last) {
            CHECK(cap >= 2 * last, "capacity %zu after %zu: less than doubled", cap, last);
            moves++;
            last = cap;
        }
        v[n] = (int32_t)(n * 7);
    }
    int same = 1;
    for (size_t i = 0; i < n; i++)
        same &= v[i] == (int32_t)(i * 7);
    CHECK(same, "contents changed while growing");
    CHECK(moves <= 10, "%zu reallocations for 1000 appends", moves);

    /* need <= cap: nothing moves, nothing changes */
    int32_t *before = v;
    size_t cap_before = cap;
    CHECK(TD_GROW(v, cap, cap) == TD_OK && v == before && cap == cap_before,
          "need == cap moved the array");
    CHECK(TD_GROW(v, cap, 0) == TD_OK && v == before && cap == cap_before,
          "need 0 moved the array");

    /* a byte count past size_t: TD_ERR_NOMEM, the array and capacity untouched */
    td_error_clear();
    td_status s = TD_GROW(v, cap, SIZE_MAX / 2);
    CHECK(s == TD_ERR_NOMEM, "overflowing need: status %d", (int)s);
    CHECK(v == before && cap == cap_before, "a failed growth changed the array or capacity");
    CHECK(strstr(td_error_message(), "bytes") != NULL, "message: \"%s\"", td_error_message());
    CHECK(v[999] == 999 * 7, "contents lost after a failed growth");
    s = TD_GROW_EXACT(v, cap, SIZE_MAX);
    CHECK(s == TD_ERR_NOMEM && v == before && cap == cap_before, "exact overflow: status %d",
          (int)s);

    /* the exact form sizes to the need; the geometric one doubles from there */
    char *b = NULL;
    size_t bcap = 0;
    CHECK(TD_GROW_EXACT(b, bcap, 5) == TD_OK && bcap == 5, "exact growth: cap %zu", bcap);
    CHECK(TD_GROW(b, bcap, 6) == TD_OK && bcap == 10, "doubling from 5: cap %zu", bcap);
    CHECK(TD_GROW_EXACT(b, bcap, 11) == TD_OK && bcap == 11, "exact to 11: cap %zu", bcap);
    free(b);

    /* an int capacity would not compile: TD_GROW(v, int_cap, n) is a pointer-type error */
    free(v);
    return test_done("test_grow");
}
