/* File-system helpers: whole-file read, atomic write (temp + fsync + rename), mkdir -p,
 * recursive remove. All return td_status with a message naming the path. */
#ifndef TD_FSUTIL_H
#define TD_FSUTIL_H

#include <stddef.h>

#include "common/status.h"

/* *data is NUL-terminated and owned by the caller (free). */
td_status td_fs_read_file(const char *path, char **data, size_t *len);
td_status td_fs_write_file_atomic(const char *path, const void *data, size_t len);
td_status td_fs_mkdirs(const char *path);
td_status td_fs_remove_tree(const char *path);
int td_fs_is_dir(const char *path);
/* The directory part of path: "." when it has none, "/" for a name in the root. */
void td_fs_dirname(const char *path, char *out, size_t n);
int td_fs_exists(const char *path);
/* fsyncs a directory so a rename inside it is durable. */
void td_fs_sync_dir(const char *path);

#endif
