/* Reading and writing the safetensors format: an 8-byte little-endian header length, a
 * JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {}},
 * then the raw little-endian tensor bytes (offsets relative to the end of the header).
 * The reader maps the file and validates every entry against the file size before any
 * tensor is touched; the writer writes to a temp file and renames. */
#ifndef TD_SAFETENSORS_H
#define TD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    TD_DT_F32,
    TD_DT_F64,
    TD_DT_F16,
    TD_DT_BF16,
    TD_DT_I32,
    TD_DT_I64,
    TD_DT_U16,
    TD_DT_U8
} td_dtype;

const char *td_dtype_name(td_dtype d);
size_t td_dtype_size(td_dtype d);

typedef struct {
    char name[160];
    td_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t begin, end; /* byte offsets into the data section */
} td_st_entry;

typedef struct td_st_file td_st_file;

/* Opens and validates `path`; *out is owned by the caller (td_st_close). */
td_status td_st_open(const char *path, td_st_file **out);
void td_st_close(td_st_file **f);
int td_st_count(const td_st_file *f);
const td_st_entry *td_st_entry_at(const td_st_file *f, int i);
/* NULL when absent. */
const td_st_entry *td_st_find(const td_st_file *f, const char *name);
/* Pointer to the entry's bytes inside the mapping (valid until td_st_close). */
const void *td_st_data(const td_st_file *f, const td_st_entry *e);
/* __metadata__ value for key, or NULL. */
const char *td_st_metadata(const td_st_file *f, const char *key);
const char *td_st_path(const td_st_file *f);

/* Copies entry `e` into float32 `dst` (numel elements), converting from F32/F64/F16/BF16;
 * with transpose (2-D only) dst receives the transposed matrix. */
td_status td_st_read_f32(const td_st_file *f, const td_st_entry *e, float *dst, int transpose);

typedef struct td_st_writer td_st_writer;
td_st_writer *td_st_writer_new(void);
void td_st_writer_free(td_st_writer **w);
/* Adds a tensor; `data` is borrowed until td_st_writer_save returns. With transpose
 * (2-D F32 only) `data` is the (shape[1], shape[0]) matrix and is written transposed. */
td_status td_st_writer_add(td_st_writer *w, const char *name, td_dtype dtype, int ndim,
                           const int64_t *shape, const void *data, int transpose);
td_status td_st_writer_meta(td_st_writer *w, const char *key, const char *value);
td_status td_st_writer_save(td_st_writer *w, const char *path);

#endif
