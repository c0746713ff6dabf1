/* llm.c-format token shards (see shard.h). */
#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fsutil.h"

td_status td_shard_open(const char *path, td_shard *out) {
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return td_error_set(TD_ERR_IO, "cannot open shard %s: %s", path, strerror(errno));
    struct stat st;
    fstat(fd, &st);
    size_t len = (size_t)st.st_size;
    if (len < TD_SHARD_HEADER_INTS * 4) {
        close(fd);
        return td_error_set(TD_ERR_FORMAT,
                            "shard %s: %zu bytes is shorter than the 1024-byte header "
                            "(truncated or not a token shard)",
                            path, len);
    }
    unsigned char *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return td_error_set(TD_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    int32_t hdr[3];
    memcpy(hdr, map, sizeof hdr);
    int tb;
    if (hdr[0] == TD_SHARD_MAGIC_U16 && hdr[1] == 1)
        tb = 2;
    else if (hdr[0] == TD_SHARD_MAGIC_U32 && hdr[1] == 7)
        tb = 4;
    else {
        munmap(map, len);
        return td_error_set(TD_ERR_FORMAT,
                            "shard %s: bad magic/version %d/%d (expected 20240520/1 for uint16 "
                            "or 20240801/7 for uint32 tokens)",
                            path, hdr[0], hdr[1]);
    }
    size_t want = TD_SHARD_HEADER_INTS * 4 + (size_t)(uint32_t)hdr[2] * (size_t)tb;
    if (hdr[2] < 0 || want != len) {
        munmap(map, len);
        return td_error_set(TD_ERR_FORMAT,
                            "shard %s: header says %d tokens (%zu bytes) but the file has %zu "
                            "bytes (truncated?)",
                            path, hdr[2], want, len);
    }
    snprintf(out->path, sizeof out->path, "%s", path);
    out->map = map;
    out->map_len = len;
    out->tokens = map + TD_SHARD_HEADER_INTS * 4;
    out->count = (size_t)hdr[2];
    out->token_bytes = tb;
    return TD_OK;
}

void td_shard_close(td_shard *s) {
    if (s->map) munmap((void *)s->map, s->map_len);
    memset(s, 0, sizeof *s);
}

td_status td_shard_write(const char *path, const int32_t *tokens, size_t n, int token_bytes) {
    if (token_bytes != 2 && token_bytes != 4)
        return td_error_set(TD_ERR_INVALID, "shard %s: token size must be 2 or 4 bytes", path);
    if (n > INT32_MAX)
        return td_error_set(TD_ERR_INVALID, "shard %s: %zu tokens exceed one shard's limit", path,
                            n);
    size_t bytes = TD_SHARD_HEADER_INTS * 4 + n * (size_t)token_bytes;
    unsigned char *buf = calloc(1, bytes);
    if (!buf) return td_error_set(TD_ERR_NOMEM, "out of memory writing %s", path);
    int32_t hdr[3] = {token_bytes == 2 ? TD_SHARD_MAGIC_U16 : TD_SHARD_MAGIC_U32,
                      token_bytes == 2 ? 1 : 7, (int32_t)n};
    memcpy(buf, hdr, sizeof hdr);
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || (token_bytes == 2 && tokens[i] > 65535)) {
            free(buf);
            return td_error_set(TD_ERR_INVALID, "shard %s: token %d at %zu does not fit %d bytes",
                                path, tokens[i], i, token_bytes);
        }
        if (token_bytes == 2) {
            uint16_t v = (uint16_t)tokens[i];
            memcpy(buf + 1024 + 2 * i, &v, 2);
        } else {
            uint32_t v = (uint32_t)tokens[i];
            memcpy(buf + 1024 + 4 * i, &v, 4);
        }
    }
    td_status s = td_fs_write_file_atomic(path, buf, bytes);
    free(buf);
    return s;
}
