/* The coordinator's journal (see journal.h). */
#include "coordinator/journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/fsutil.h"
#include "common/log.h"

struct td_journal {
    int fd;
    char path[1024];
    long count;
    long torn;
    off_t size; /* bytes of whole records */
};

static unsigned long crc_of(const char *s, size_t n) {
    return crc32(crc32(0L, Z_NULL, 0), (const Bytef *)s, (uInt)n);
}

/* Checks one line (without its newline) and parses its JSON object into *rec; returns 0 when
 * the line is not a whole record. */
static int parse_line(const char *s, size_t n, cJSON **rec) {
    *rec = NULL;
    if (n < 11 || s[8] != ' ') return 0;
    unsigned long want = 0;
    for (int i = 0; i < 8; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0) return 0;
        want = want << 4 | (unsigned long)v;
    }
    if (crc_of(s + 9, n - 9) != want) return 0;
    *rec = cJSON_ParseWithLength(s + 9, n - 9);
    if (*rec && !cJSON_IsObject(*rec)) {
        cJSON_Delete(*rec);
        *rec = NULL;
    }
    return *rec != NULL;
}

static td_status replay(td_journal *j, const char *buf, size_t len, td_journal_replay_fn fn,
                        void *ctx) {
    size_t pos = 0;
    long line = 0;
    while (pos < len) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (buf + pos)) : len - pos;
        int last = !nl || (size_t)(nl - buf) + 1 == len;
        cJSON *rec;
        if (!nl || !parse_line(buf + pos, n, &rec)) {
            if (!last)
                return td_error_set(TD_ERR_FORMAT,
                                    "%s:%ld: not a whole journal record, and records follow it: "
                                    "the file was damaged (a crash tears only the last record); "
                                    "keep a copy, then remove the damaged line to go on",
                                    j->path, line);
            j->torn = (long)(len - pos); /* a crash while appending: cut it off */
            break;
        }
        td_status s = fn ? fn(ctx, rec, line) : TD_OK;
        cJSON_Delete(rec);
        TD_TRY(s);
        j->count++;
        pos += n + 1;
        j->size = (off_t)pos;
    }
    return TD_OK;
}

td_status td_journal_open(const char *path, td_journal_replay_fn fn, void *ctx, td_journal **out) {
    *out = NULL;
    td_journal *j = calloc(1, sizeof *j);
    if (!j) return td_error_set(TD_ERR_NOMEM, "out of memory");
    snprintf(j->path, sizeof j->path, "%s", path);
    int existed = td_fs_exists(path);
    j->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (j->fd < 0) {
        td_status s =
            td_error_set(TD_ERR_IO, "cannot open the journal %s: %s", path, strerror(errno));
        free(j);
        return s;
    }
    if (flock(j->fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(j->fd);
        free(j);
        return e == EWOULDBLOCK
                   ? td_error_set(TD_ERR_INVALID,
                                  "the journal %s is in use by another coordinator (it holds "
                                  "the file's lock): stop that one first",
                                  path)
                   : td_error_set(TD_ERR_IO, "cannot lock the journal %s: %s", path, strerror(e));
    }
    if (!existed) { /* the new file's name reaches the disk too */
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            slash[1] = 0;
        else if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
        td_fs_sync_dir(dir);
    }
    char *buf = NULL;
    size_t len = 0;
    td_status s = td_fs_read_file(path, &buf, &len);
    if (s == TD_OK) s = replay(j, buf, len, fn, ctx);
    free(buf);
    if (s == TD_OK && j->torn) {
        TD_LOG_WARN("%s: the last record was torn (%ld bytes, a crash while it was written): "
                    "cut off; %ld records replayed",
                    path, j->torn, j->count);
        if (ftruncate(j->fd, j->size) != 0 || fsync(j->fd) != 0)
            s = td_error_set(TD_ERR_IO, "cannot cut the torn record off %s: %s", path,
                             strerror(errno));
    }
    if (s != TD_OK) {
        td_journal_free(&j);
        return s;
    }
    *out = j;
    return TD_OK;
}

td_status td_journal_append(td_journal *j, const cJSON *rec) {
    char *text = cJSON_PrintUnformatted(rec);
    if (!text) return td_error_set(TD_ERR_NOMEM, "out of memory for a journal record");
    size_t n = strlen(text);
    char *line = malloc(n + 11);
    if (!line) {
        free(text);
        return td_error_set(TD_ERR_NOMEM, "out of memory for a journal record");
    }
    snprintf(line, 10, "%08lx ", crc_of(text, n));
    memcpy(line + 9, text, n);
    line[9 + n] = '\n';
    free(text);
    size_t total = n + 10, done = 0;
    td_status s = TD_OK;
    while (done < total) {
        ssize_t w = write(j->fd, line + done, total - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            s = td_error_set(TD_ERR_IO, "cannot write to the journal %s: %s", j->path,
                             w < 0 ? strerror(errno) : "no progress");
            break;
        }
        done += (size_t)w;
    }
    free(line);
    if (s == TD_OK && fsync(j->fd) != 0)
        s = td_error_set(TD_ERR_IO, "cannot sync the journal %s: %s", j->path, strerror(errno));
    if (s != TD_OK) {
        /* leave no half record for the next append to bury mid-file */
        if (ftruncate(j->fd, j->size) != 0)
            TD_LOG_ERROR("%s: could not cut a failed append off: %s", j->path, strerror(errno));
        return s;
    }
    j->size += (off_t)total;
    j->count++;
    return TD_OK;
}

long td_journal_count(const td_journal *j) {
    return j->count;
}

long td_journal_torn_bytes(const td_journal *j) {
    return j->torn;
}

void td_journal_free(td_journal **jp) {
    td_journal *j = *jp;
    if (!j) return;
    if (j->fd >= 0) close(j->fd); /* releases the lock */
    free(j);
    *jp = NULL;
}
