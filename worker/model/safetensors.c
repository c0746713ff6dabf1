/* safetensors reader and writer (see safetensors.h). */
#include "worker/model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/grow.h"

static const struct {
    const char *name;
    size_t size;
} g_dtypes[] = {{"F32", 4}, {"F64", 8}, {"F16", 2}, {"BF16", 2},
                {"I32", 4}, {"I64", 8}, {"U16", 2}, {"U8", 1}};

const char *td_dtype_name(td_dtype d) {
    return g_dtypes[d].name;
}
size_t td_dtype_size(td_dtype d) {
    return g_dtypes[d].size;
}

struct td_st_file {
    char path[1024];
    unsigned char *map;
    size_t map_len;
    const unsigned char *data;
    size_t data_len;
    td_st_entry *entries;
    int n;
    cJSON *meta;
};

static td_status bad(const char *path, const char *what) {
    return td_error_set(TD_ERR_FORMAT, "%s: not a valid safetensors file: %s", path, what);
}

td_status td_st_open(const char *path, td_st_file **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return td_error_set(TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return td_error_set(TD_ERR_IO, "%s is not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return bad(path, "shorter than its 8-byte header length");
    }
    unsigned char *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return td_error_set(TD_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    td_st_file *f = calloc(1, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    f->map = map;
    f->map_len = len;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | map[i];
    td_status s = TD_OK;
    cJSON *hdr = NULL;
    if (hlen > len - 8 || hlen > (100u << 20)) {
        s = bad(path, "header length exceeds the file size (truncated file?)");
        goto fail;
    }
    hdr = cJSON_ParseWithLength((const char *)map + 8, (size_t)hlen);
    if (!cJSON_IsObject(hdr)) {
        s = bad(path, "header is not a JSON object");
        goto fail;
    }
    f->data = map + 8 + hlen;
    f->data_len = len - 8 - hlen;
    int n = cJSON_GetArraySize(hdr);
    f->entries = calloc((size_t)n + 1, sizeof *f->entries);
    const cJSON *it;
    cJSON_ArrayForEach(it, hdr) {
        if (!strcmp(it->string, "__metadata__")) {
            f->meta = cJSON_Duplicate(it, 1);
            continue;
        }
        td_st_entry *e = &f->entries[f->n];
        snprintf(e->name, sizeof e->name, "%s", it->string);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        char msg[512];
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
            cJSON_GetArraySize(off) != 2 || cJSON_GetArraySize(sh) > 8) {
            snprintf(msg, sizeof msg, "tensor '%s' has a malformed header entry", e->name);
            s = bad(path, msg);
            goto fail;
        }
        int known = 0;
        for (size_t k = 0; k < sizeof g_dtypes / sizeof g_dtypes[0]; k++)
            if (!strcmp(dt->valuestring, g_dtypes[k].name)) {
                e->dtype = (td_dtype)k;
                known = 1;
            }
        if (!known) {
            snprintf(msg, sizeof msg, "tensor '%s' has unsupported dtype %s", e->name,
                     dt->valuestring);
            s = bad(path, msg);
            goto fail;
        }
        e->ndim = cJSON_GetArraySize(sh);
        e->numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            double v = cJSON_GetArrayItem(sh, d)->valuedouble;
            if (v < 0 || v > 1e12) {
                snprintf(msg, sizeof msg, "tensor '%s' has a bad shape", e->name);
                s = bad(path, msg);
                goto fail;
            }
            e->shape[d] = (int64_t)v;
            e->numel *= (size_t)v;
        }
        double b = cJSON_GetArrayItem(off, 0)->valuedouble,
               en = cJSON_GetArrayItem(off, 1)->valuedouble;
        if (b < 0 || en < b || en > (double)f->data_len) {
            snprintf(msg, sizeof msg,
                     "tensor '%s' data [%.0f, %.0f) lies outside the %zu data bytes (truncated "
                     "file?)",
                     e->name, b, en, f->data_len);
            s = bad(path, msg);
            goto fail;
        }
        e->begin = (size_t)b;
        e->end = (size_t)en;
        if (e->end - e->begin != e->numel * td_dtype_size(e->dtype)) {
            snprintf(msg, sizeof msg,
                     "tensor '%s' holds %zu bytes but its shape and dtype need %zu", e->name,
                     e->end - e->begin, e->numel * td_dtype_size(e->dtype));
            s = bad(path, msg);
            goto fail;
        }
        f->n++;
    }
    cJSON_Delete(hdr);
    *out = f;
    return TD_OK;
fail:
    cJSON_Delete(hdr);
    td_st_close(&f);
    return s;
}

void td_st_close(td_st_file **fp) {
    if (!fp || !*fp) return;
    td_st_file *f = *fp;
    if (f->map) munmap(f->map, f->map_len);
    free(f->entries);
    cJSON_Delete(f->meta);
    free(f);
    *fp = NULL;
}

int td_st_count(const td_st_file *f) {
    return f->n;
}
const td_st_entry *td_st_entry_at(const td_st_file *f, int i) {
    return &f->entries[i];
}
const td_st_entry *td_st_find(const td_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->entries[i].name, name)) return &f->entries[i];
    return NULL;
}
const void *td_st_data(const td_st_file *f, const td_st_entry *e) {
    return f->data + e->begin;
}
const char *td_st_metadata(const td_st_file *f, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
const char *td_st_path(const td_st_file *f) {
    return f->path;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

td_status td_st_read_f32(const td_st_file *f, const td_st_entry *e, float *dst, int transpose) {
    const unsigned char *src = td_st_data(f, e);
    size_t n = e->numel;
    int64_t rows = e->ndim == 2 ? e->shape[0] : 1, cols = e->ndim == 2 ? e->shape[1] : (int64_t)n;
    if (transpose && e->ndim != 2)
        return td_error_set(TD_ERR_INVALID, "%s: tensor '%s' is not 2-D", f->path, e->name);
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (e->dtype) {
        case TD_DT_F32:
            memcpy(&v, src + 4 * i, 4);
            break;
        case TD_DT_F64: {
            double d;
            memcpy(&d, src + 8 * i, 8);
            v = (float)d;
            break;
        }
        case TD_DT_F16: {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            v = half_to_float(h);
            break;
        }
        case TD_DT_BF16: {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&v, &bits, 4);
            break;
        }
        default:
            return td_error_set(TD_ERR_FORMAT,
                                "%s: tensor '%s' has dtype %s, expected a float type", f->path,
                                e->name, td_dtype_name(e->dtype));
        }
        if (transpose) {
            size_t r = i / (size_t)cols, c = i % (size_t)cols;
            dst[c * (size_t)rows + r] = v;
        } else {
            dst[i] = v;
        }
    }
    return TD_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* writer */

typedef struct {
    td_st_entry e;
    const void *data;
    int transpose;
} w_entry;

struct td_st_writer {
    w_entry *items;
    int n;
    size_t cap;
    cJSON *meta;
};

td_st_writer *td_st_writer_new(void) {
    td_st_writer *w = calloc(1, sizeof *w);
    if (w) w->meta = cJSON_CreateObject();
    return w;
}

void td_st_writer_free(td_st_writer **wp) {
    if (!wp || !*wp) return;
    free((*wp)->items);
    cJSON_Delete((*wp)->meta);
    free(*wp);
    *wp = NULL;
}

td_status td_st_writer_add(td_st_writer *w, const char *name, td_dtype dtype, int ndim,
                           const int64_t *shape, const void *data, int transpose) {
    TD_TRY(TD_GROW(w->items, w->cap, (size_t)w->n + 1));
    if (transpose && (ndim != 2 || dtype != TD_DT_F32))
        return td_error_set(TD_ERR_INVALID, "safetensors: transpose needs a 2-D F32 tensor (%s)",
                            name);
    w_entry *it = &w->items[w->n++];
    memset(it, 0, sizeof *it);
    snprintf(it->e.name, sizeof it->e.name, "%s", name);
    it->e.dtype = dtype;
    it->e.ndim = ndim;
    it->e.numel = 1;
    for (int d = 0; d < ndim; d++) {
        it->e.shape[d] = shape[d];
        it->e.numel *= (size_t)shape[d];
    }
    it->data = data;
    it->transpose = transpose;
    return TD_OK;
}

td_status td_st_writer_meta(td_st_writer *w, const char *key, const char *value) {
    cJSON_DeleteItemFromObjectCaseSensitive(w->meta, key);
    cJSON_AddStringToObject(w->meta, key, value);
    return TD_OK;
}

static int write_all(FILE *fp, const void *p, size_t n) {
    return fwrite(p, 1, n, fp) == n;
}

td_status td_st_writer_save(td_st_writer *w, const char *path) {
    cJSON *hdr = cJSON_CreateObject();
    if (cJSON_GetArraySize(w->meta) > 0)
        cJSON_AddItemToObject(hdr, "__metadata__", cJSON_Duplicate(w->meta, 1));
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        td_st_entry *e = &w->items[i].e;
        cJSON *t = cJSON_AddObjectToObject(hdr, e->name);
        cJSON_AddStringToObject(t, "dtype", td_dtype_name(e->dtype));
        cJSON *sh = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
        e->begin = off;
        e->end = off + e->numel * td_dtype_size(e->dtype);
        off = e->end;
        cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)e->begin));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)e->end));
    }
    char *text = cJSON_PrintUnformatted(hdr);
    cJSON_Delete(hdr);
    if (!text) return td_error_set(TD_ERR_NOMEM, "out of memory writing %s", path);
    size_t hlen = strlen(text), padded = (hlen + 7) / 8 * 8;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(text);
        return td_error_set(TD_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = write_all(fp, lenb, 8) && write_all(fp, text, hlen);
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', fp) != EOF;
    free(text);
    float *tbuf = NULL;
    size_t tcap = 0;
    td_status s = TD_OK;
    for (int i = 0; ok && i < w->n; i++) {
        const w_entry *it = &w->items[i];
        size_t nbytes = it->e.end - it->e.begin;
        if (!it->transpose) {
            ok = write_all(fp, it->data, nbytes);
            continue;
        }
        /* data is (cols, rows) internally; HF wants (rows, cols) = shape */
        int64_t rows = it->e.shape[0], cols = it->e.shape[1];
        /* kept between tensors, so it only grows to the largest */
        s = TD_GROW_EXACT(tbuf, tcap, (size_t)rows * (size_t)cols);
        if (s != TD_OK) {
            ok = 0;
            break;
        }
        const float *src = it->data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                tbuf[r * cols + c] = src[c * rows + r];
        ok = write_all(fp, tbuf, nbytes);
    }
    free(tbuf);
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    if (fclose(fp) != 0) ok = 0;
    if (!ok) {
        unlink(tmp);
        if (s != TD_OK) return td_error_wrap(s, "writing %s: ", path);
        return td_error_set(TD_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return td_error_set(TD_ERR_IO, "cannot rename %s: %s", tmp, strerror(errno));
    }
    return TD_OK;
}
