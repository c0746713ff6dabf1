/* File-system helpers (see fsutil.h). */
#include "common/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

td_status td_fs_read_file(const char *path, char **data, size_t *len) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return td_error_set(TD_ERR_INVALID, "%s is a directory; a file is expected there", path);
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return td_error_set(TD_ERR_INVALID,
                            "%s is not a regular file (a FIFO, device or socket); a file is "
                            "expected there",
                            path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return td_error_set(errno == ENOENT ? TD_ERR_NOTFOUND : TD_ERR_IO, "cannot open %s: %s",
                            path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return td_error_set(TD_ERR_IO, "cannot seek in %s: %s", path, strerror(errno));
    }
    long n = ftell(f);
    rewind(f);
    if (n < 0) {
        fclose(f);
        return td_error_set(TD_ERR_IO, "cannot size %s (is it a directory?)", path);
    }
    char *buf = malloc((size_t)n + 1);
    if (!buf) {
        fclose(f);
        return td_error_set(TD_ERR_NOMEM, "out of memory reading %s (%ld bytes)", path, n);
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return td_error_set(TD_ERR_IO, "short read from %s", path);
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = (size_t)n;
    return TD_OK;
}

void td_fs_sync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

td_status td_fs_write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return td_error_set(TD_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return td_error_set(TD_ERR_IO, "cannot write %s: %s", tmp, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return td_error_set(TD_ERR_IO, "cannot flush %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return td_error_set(TD_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    return TD_OK;
}

td_status td_fs_mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    size_t n = strlen(buf);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char c = buf[i];
            buf[i] = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return td_error_set(TD_ERR_IO, "cannot create directory %s: %s", buf,
                                    strerror(errno));
            buf[i] = c;
        }
    }
    if (!td_fs_is_dir(path))
        return td_error_set(TD_ERR_IO, "%s exists and is not a directory", path);
    return TD_OK;
}

td_status td_fs_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT
                   ? TD_OK
                   : td_error_set(TD_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d)
            return td_error_set(TD_ERR_IO, "cannot open directory %s: %s", path, strerror(errno));
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            td_status s = td_fs_remove_tree(sub);
            if (s != TD_OK) {
                closedir(d);
                return s;
            }
        }
        closedir(d);
        if (rmdir(path) != 0)
            return td_error_set(TD_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    } else if (unlink(path) != 0) {
        return td_error_set(TD_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    }
    return TD_OK;
}

int td_fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int td_fs_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

void td_fs_dirname(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, n, ".");
    else if (slash == path)
        snprintf(out, n, "/");
    else
        snprintf(out, n, "%.*s", (int)(slash - path), path);
}
