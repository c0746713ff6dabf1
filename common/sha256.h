/* SHA-256 (FIPS 180-4), for the manifest's file hashes. */
#ifndef TD_SHA256_H
#define TD_SHA256_H
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t nbuf;
} td_sha256;

void td_sha256_init(td_sha256 *s);
void td_sha256_update(td_sha256 *s, const void *data, size_t n);
/* Writes 64 lowercase hex digits and a NUL to hex (65 bytes). */
void td_sha256_final_hex(td_sha256 *s, char hex[65]);
/* Hashes n bytes at data. */
void td_sha256_hex(const void *data, size_t n, char hex[65]);
/* Hashes a whole file. */
td_status td_sha256_file(const char *path, char hex[65]);
#endif
