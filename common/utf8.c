/* UTF-8 validation and repair (see utf8.h). */
#include "common/utf8.h"

#include <stdint.h>
#include <string.h>

int td_utf8_valid(const unsigned char *s, size_t n, size_t *bad) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) goto fail;
        uint32_t cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) goto fail;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto fail;
        i += k;
    }
    return 1;
fail:
    *bad = i;
    return 0;
}

size_t td_utf8_repair(const char *s, size_t n, char *dst) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t bad = 0, k = 1;
        unsigned c = p[i];
        if (c >= 0x80) { /* the length of a valid sequence here, or 0 */
            size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
            k = len && i + len <= n && td_utf8_valid(p + i, len, &bad) ? len : 0;
        }
        if (k) {
            memcpy(dst + o, p + i, k);
            o += k;
            i += k;
        } else {
            memcpy(dst + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    dst[o] = '\0';
    return o;
}
