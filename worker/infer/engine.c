/* Inference engine: paged KV cache, continuous batching, sampling (see engine.h). */
#include "worker/infer/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/rng.h"
#include "worker/infer/kv_cache.h"

typedef struct {
    int id;
    td_req_state state;
    td_finish finish;
    uint64_t order; /* submission order: admission is first come, first served */
    int32_t *toks;  /* prompt then generated */
    int n_prompt, n, cap;
    int done_pos; /* tokens already in the KV cache */
    int32_t *blocks;
    int n_blocks, reserved;
    td_sampling s;
    int adapter; /* 0: the base model; k: the serving model's adapter k */
    char **stop;
    td_rng rng;
    char *text; /* decoded bytes of generated tokens */
    size_t text_len, text_cap, safe_len;
} req;

struct td_engine {
    td_infer_model *m;
    td_bpe *tok;
    td_engine_opts o;
    td_kv_cache *kv;
    int *free_list;
    size_t n_free, n_blocks, reserved;
    req *r;
    int nr, cap;
    uint64_t submitted;
    int eot, V, maxT;
    float *logits;
    td_infer_seg *segs;
    int *seg_req;
    struct cand {
        int id;
        float p;
    } * cand;
    uint64_t steps, mixed_steps; /* forwards; those whose rows asked for different adapters */
    td_comm *tp;                 /* size > 1 only */
    int64_t *plan;
    size_t plan_cap;
};

td_status td_engine_new(td_infer_model *m, td_bpe *tok, const td_engine_opts *o, td_engine **out) {
    *out = NULL;
    td_engine *e = calloc(1, sizeof *e);
    if (!e) return td_error_set(TD_ERR_NOMEM, "out of memory");
    const td_model_config *cfg = td_infer_model_config(m);
    e->m = m;
    e->tok = tok;
    e->o = *o;
    if (e->o.block_tokens <= 0) e->o.block_tokens = 16;
    if (e->o.max_seqs <= 0) e->o.max_seqs = 16;
    if (e->o.prefill_chunk <= 0) e->o.prefill_chunk = 64;
    if (e->o.max_step_tokens <= 0) e->o.max_step_tokens = e->o.max_seqs + e->o.prefill_chunk;
    e->V = cfg->vocab_size;
    e->maxT = cfg->max_position_embeddings;
    size_t per_block = td_kv_bytes_per_token(td_infer_model_weights(m)) * (size_t)e->o.block_tokens;
    size_t full = (size_t)((e->maxT + e->o.block_tokens - 1) / e->o.block_tokens);
    e->n_blocks = e->o.kv_bytes ? e->o.kv_bytes / per_block : full * (size_t)e->o.max_seqs;
    e->tp = o->tp && o->tp->size > 1 ? o->tp : NULL;
    if (e->tp) { /* kv_bytes is per rank; the leader's block count rules the group */
        int64_t nb = (int64_t)e->n_blocks;
        td_status sb = td_comm_bcast(e->tp, &nb, 1, TD_COMM_I64, 0);
        if (sb != TD_OK) {
            free(e);
            return sb;
        }
        e->n_blocks = (size_t)nb;
        sb = td_infer_set_tp_comm(m, e->tp);
        if (sb != TD_OK) {
            free(e);
            return sb;
        }
    }
    if (e->n_blocks == 0) {
        size_t budget = e->o.kv_bytes;
        free(e);
        return td_error_set(TD_ERR_INVALID, "KV cache budget %zu bytes holds no block of %zu bytes",
                            budget, per_block);
    }
    td_status s = td_kv_cache_new(m, e->o.block_tokens, e->n_blocks, &e->kv);
    if (s == TD_OK) s = td_infer_plan(m, e->o.max_step_tokens, e->o.max_seqs);
    e->free_list = malloc(sizeof *e->free_list * e->n_blocks);
    e->logits = malloc(sizeof(float) * (size_t)e->o.max_seqs * e->V);
    e->segs = calloc((size_t)e->o.max_seqs, sizeof *e->segs);
    e->seg_req = calloc((size_t)e->o.max_seqs, sizeof *e->seg_req);
    e->cand = malloc(sizeof *e->cand * (size_t)e->V);
    if (s == TD_OK && (!e->free_list || !e->logits || !e->segs || !e->seg_req || !e->cand))
        s = td_error_set(TD_ERR_NOMEM, "out of memory for the engine");
    if (s != TD_OK) {
        td_engine_free(&e);
        return s;
    }
    for (size_t i = 0; i < e->n_blocks; i++)
        e->free_list[i] = (int)(e->n_blocks - 1 - i);
    e->n_free = e->n_blocks;
    e->eot = tok ? td_bpe_special_id(tok, "<|endoftext|>") : -1;
    *out = e;
    return TD_OK;
}

static void req_release(td_engine *e, req *q) {
    for (int i = 0; i < q->n_blocks; i++)
        e->free_list[e->n_free++] = q->blocks[i];
    e->reserved -= (size_t)q->reserved;
    q->n_blocks = q->reserved = 0;
}

/* a request's own memory (not its KV blocks: req_release returns those) */
static void req_free_mem(req *q) {
    free(q->toks);
    free(q->blocks);
    free(q->text);
    for (int k = 0; q->stop && q->stop[k]; k++)
        free(q->stop[k]);
    free(q->stop);
}

void td_engine_free(td_engine **ep) {
    if (!ep || !*ep) return;
    td_engine *e = *ep;
    for (int i = 0; i < e->nr; i++)
        req_free_mem(&e->r[i]);
    free(e->r);
    td_kv_cache_free(&e->kv);
    free(e->free_list);
    free(e->logits);
    free(e->segs);
    free(e->seg_req);
    free(e->cand);
    free(e->plan);
    free(e);
    *ep = NULL;
}

static int blocks_for(const td_engine *e, int positions) {
    return (positions + e->o.block_tokens - 1) / e->o.block_tokens;
}

td_status td_engine_submit(td_engine *e, const int32_t *prompt, int n, const td_sampling *s,
                           int *id) {
    return td_engine_submit_adapter(e, 0, prompt, n, s, id);
}

td_status td_engine_submit_adapter(td_engine *e, int adapter, const int32_t *prompt, int n,
                                   const td_sampling *s, int *id) {
    if (adapter < 0 || adapter > td_infer_num_adapters(e->m))
        return td_error_set(TD_ERR_INVALID, "adapter %d: the model serves %d", adapter,
                            td_infer_num_adapters(e->m));
    if (n <= 0) return td_error_set(TD_ERR_INVALID, "empty prompt");
    if (n >= e->maxT)
        return td_error_set(TD_ERR_INVALID,
                            "prompt of %d tokens leaves no room in the context "
                            "of %d",
                            n, e->maxT);
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= e->V)
            return td_error_set(TD_ERR_INVALID, "prompt token %d is outside [0, %d)", prompt[i],
                                e->V);
    if (s->stop && s->stop[0] && !e->tok)
        return td_error_set(TD_ERR_INVALID, "stop strings need a tokenizer");
    for (int k = 0; s->stop && s->stop[k]; k++)
        if (!s->stop[k][0]) return td_error_set(TD_ERR_INVALID, "empty stop string");
    int mt = s->max_tokens;
    if (mt <= 0 || mt > e->maxT - n) mt = e->maxT - n; /* no overflow: both are bounded */
    int total = n + mt;
    if ((size_t)blocks_for(e, total - 1) > e->n_blocks)
        return td_error_set(TD_ERR_INVALID, "request needs %d KV blocks, the cache has %zu",
                            blocks_for(e, total - 1), e->n_blocks);
    int slot = 0;
    while (slot < e->nr && e->r[slot].state != TD_REQ_FREE)
        slot++;
    if (slot == e->nr) {
        size_t cap = (size_t)e->cap;
        TD_TRY(TD_GROW(e->r, cap, (size_t)e->nr + 1));
        e->cap = (int)cap;
        e->nr++;
    }
    req *q = &e->r[slot];
    memset(q, 0, sizeof *q);
    q->id = slot;
    q->order = e->submitted++;
    q->cap = total + 1;
    q->toks = malloc(sizeof *q->toks * (size_t)q->cap);
    memcpy(q->toks, prompt, sizeof *prompt * (size_t)n);
    q->n = q->n_prompt = n;
    q->blocks = malloc(sizeof *q->blocks * (size_t)blocks_for(e, total));
    q->s = *s;
    q->s.max_tokens = mt;
    q->adapter = adapter;
    int ns = 0;
    while (s->stop && s->stop[ns])
        ns++;
    q->stop = calloc((size_t)ns + 1, sizeof *q->stop);
    for (int k = 0; k < ns; k++)
        q->stop[k] = strdup(s->stop[k]);
    q->s.stop = NULL;
    td_rng_seed(&q->rng, s->seed);
    *id = q->id;
    return TD_OK;
}

static int cmp_cand(const void *a, const void *b) {
    float x = ((const struct cand *)a)->p, y = ((const struct cand *)b)->p;
    if (x != y) return (x < y) - (x > y);
    return ((const struct cand *)a)->id - ((const struct cand *)b)->id;
}

static int sample(td_engine *e, req *q, const float *l) {
    int V = e->V, best = 0;
    for (int j = 1; j < V; j++)
        if (l[j] > l[best]) best = j;
    if (q->s.temperature <= 0) return best;
    double sum = 0;
    for (int j = 0; j < V; j++) {
        e->cand[j].id = j;
        e->cand[j].p = (float)exp((l[j] - l[best]) / q->s.temperature);
        sum += e->cand[j].p;
    }
    qsort(e->cand, (size_t)V, sizeof *e->cand, cmp_cand);
    int n = q->s.top_k > 0 && q->s.top_k < V ? q->s.top_k : V;
    double top_p = q->s.top_p > 0 && q->s.top_p < 1 ? q->s.top_p : 1.0, mass = 0;
    for (int j = 0; j < n; j++) {
        mass += e->cand[j].p / sum;
        if (mass >= top_p) {
            n = j + 1;
            break;
        }
    }
    double tot = 0;
    for (int j = 0; j < n; j++)
        tot += e->cand[j].p;
    double x = td_rng_uniform_f64(&q->rng) * tot, acc = 0;
    for (int j = 0; j < n; j++) {
        acc += e->cand[j].p;
        if (x < acc) return e->cand[j].id;
    }
    return e->cand[n - 1].id;
}

/* Length of s[0..n) without a trailing incomplete UTF-8 character: a lead byte followed by
 * fewer continuation bytes than it announces is held back until the rest arrives. Bytes
 * that can never complete (invalid sequences) are passed through. */
size_t td_utf8_stream_len(const char *s, size_t n) {
    size_t i = n, back = 0;
    while (i > 0 && back < 3 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return n;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return (lead >= 0xC0 && back + 1 < need) ? i - 1 : n;
}

static td_status append_text(td_engine *e, req *q, int32_t t) {
    if (!e->tok || t == e->eot) return TD_OK;
    char *b = NULL;
    size_t cap = 0, k = td_bpe_decode(e->tok, &t, 1, &b, &cap);
    td_status s = TD_GROW(q->text, q->text_cap, q->text_len + k + 1);
    if (s != TD_OK) {
        free(b);
        return s;
    }
    memcpy(q->text + q->text_len, b, k);
    q->text_len += k;
    q->text[q->text_len] = 0;
    free(b);
    size_t safe = td_utf8_stream_len(q->text, q->text_len);
    /* hold back a tail that could still become a stop string */
    for (int k = 0; q->stop && q->stop[k]; k++) {
        size_t sl = strlen(q->stop[k]);
        for (size_t t = sl - 1; t > 0; t--)
            if (t <= q->text_len && !memcmp(q->text + q->text_len - t, q->stop[k], t)) {
                if (q->text_len - t < safe) safe = q->text_len - t;
                break;
            }
    }
    if (safe > q->safe_len || q->state == TD_REQ_DONE) q->safe_len = safe;
    return TD_OK;
}

static void finish(td_engine *e, req *q, td_finish why) {
    q->state = TD_REQ_DONE;
    q->finish = why;
    req_release(e, q);
}

/* ---------------------------------------------------------------------------------------- */
/* tensor-parallel groups: the leader broadcasts each step's plan as int64s:
 * nseg, then per segment n, pos, adapter, nblocks, tokens[n], blocks[nblocks]; nseg < 0
 * stops */

static td_status plan_put(td_engine *e, size_t *k, int64_t v) {
    TD_TRY(TD_GROW(e->plan, e->plan_cap, *k + 1));
    e->plan[(*k)++] = v;
    return TD_OK;
}

static td_status plan_bcast(td_engine *e, size_t *n) {
    int64_t len = (int64_t)*n;
    TD_TRY(td_comm_bcast(e->tp, &len, 1, TD_COMM_I64, 0));
    TD_TRY(TD_GROW_EXACT(e->plan, e->plan_cap, (size_t)len));
    *n = (size_t)len;
    return td_comm_bcast(e->tp, e->plan, (size_t)len, TD_COMM_I64, 0);
}

static td_status send_plan(td_engine *e, int nseg) {
    size_t k = 0;
    TD_TRY(plan_put(e, &k, nseg));
    for (int s = 0; s < nseg; s++) {
        const td_infer_seg *g = &e->segs[s];
        int nb = blocks_for(e, g->pos + g->n);
        TD_TRY(plan_put(e, &k, g->n));
        TD_TRY(plan_put(e, &k, g->pos));
        TD_TRY(plan_put(e, &k, g->adapter));
        TD_TRY(plan_put(e, &k, nb));
        for (int i = 0; i < g->n; i++)
            TD_TRY(plan_put(e, &k, g->tokens[i]));
        for (int i = 0; i < nb; i++)
            TD_TRY(plan_put(e, &k, g->blocks[i]));
    }
    return plan_bcast(e, &k);
}

td_status td_engine_stop_members(td_engine *e) {
    if (!e->tp) return TD_OK;
    size_t k = 0;
    TD_TRY(plan_put(e, &k, -1));
    return plan_bcast(e, &k);
}

td_status td_engine_member_loop(td_engine *e) {
    if (!e->tp) return TD_OK;
    int32_t *buf = NULL;
    size_t cap = 0;
    td_status s = TD_OK;
    for (;;) {
        size_t n = 0;
        s = plan_bcast(e, &n);
        if (s != TD_OK || n == 0 || e->plan[0] < 0) break;
        int nseg = (int)e->plan[0];
        if (nseg > e->o.max_seqs) {
            s = td_error_set(TD_ERR_RUNTIME, "tensor-parallel plan of %d sequences", nseg);
            break;
        }
        s = TD_GROW_EXACT(buf, cap, n);
        if (s != TD_OK) break;
        size_t k = 1, w = 0;
        for (int g = 0; g < nseg; g++) {
            int len = (int)e->plan[k++], pos = (int)e->plan[k++];
            int adapter = (int)e->plan[k++], nb = (int)e->plan[k++];
            int32_t *toks = buf + w;
            for (int i = 0; i < len; i++)
                buf[w++] = (int32_t)e->plan[k++];
            int32_t *blocks = buf + w;
            for (int i = 0; i < nb; i++)
                buf[w++] = (int32_t)e->plan[k++];
            e->segs[g] = (td_infer_seg){toks, len, pos, blocks, adapter};
        }
        s = td_infer_forward(e->m, e->kv, e->segs, nseg, NULL);
        if (s != TD_OK) break;
    }
    free(buf);
    return s;
}

td_status td_engine_step(td_engine *e, int *active) {
    /* admit waiting requests in order while their whole need can be reserved */
    int running = 0;
    for (int i = 0; i < e->nr; i++)
        running += e->r[i].state == TD_REQ_RUNNING;
    while (running < e->o.max_seqs) {
        req *q = NULL; /* the earliest submitted waiting request */
        for (int i = 0; i < e->nr; i++)
            if (e->r[i].state == TD_REQ_WAITING && (!q || e->r[i].order < q->order)) q = &e->r[i];
        if (!q) break;
        /* the last sampled token is never fed back, so it needs no cache position */
        int need = blocks_for(e, q->n_prompt + q->s.max_tokens - 1);
        if ((size_t)need > e->n_blocks - e->reserved) break; /* FCFS: later ones wait too */
        q->reserved = need;
        e->reserved += (size_t)need;
        q->state = TD_REQ_RUNNING;
        running++;
    }
    /* plan the step: decodes first, then prefill chunks within the token budget */
    int nseg = 0, budget = e->o.max_step_tokens;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->nr && nseg < e->o.max_seqs && budget > 0; i++) {
            req *q = &e->r[i];
            if (q->state != TD_REQ_RUNNING) continue;
            int todo = q->n - q->done_pos, decoding = q->done_pos >= q->n_prompt;
            if (pass == 0 ? !decoding : decoding) continue;
            int take = decoding ? 1 : todo;
            if (!decoding && take > e->o.prefill_chunk) take = e->o.prefill_chunk;
            if (take > budget) take = budget;
            while (q->n_blocks < blocks_for(e, q->done_pos + take))
                q->blocks[q->n_blocks++] = e->free_list[--e->n_free];
            e->segs[nseg] =
                (td_infer_seg){q->toks + q->done_pos, take, q->done_pos, q->blocks, q->adapter};
            e->seg_req[nseg++] = i;
            budget -= take;
        }
    if (nseg > 0 && e->tp) TD_TRY(send_plan(e, nseg));
    if (nseg > 0) TD_TRY(td_infer_forward(e->m, e->kv, e->segs, nseg, e->logits));
    if (nseg > 0) {
        e->steps++;
        for (int k = 1; k < nseg; k++)
            if (e->segs[k].adapter != e->segs[0].adapter) {
                e->mixed_steps++;
                break;
            }
    }
    for (int k = 0; k < nseg; k++) {
        req *q = &e->r[e->seg_req[k]];
        q->done_pos += e->segs[k].n;
        if (q->done_pos < q->n) continue; /* more prompt to prefill */
        int32_t t = sample(e, q, e->logits + (size_t)k * e->V);
        q->toks[q->n++] = t;
        int gen = q->n - q->n_prompt;
        if (t == e->eot && !q->s.ignore_eot) {
            finish(e, q, TD_FINISH_EOT);
            continue;
        }
        TD_TRY(append_text(e, q, t));
        int stopped = 0;
        for (int s = 0; q->text && q->stop[s] && !stopped; s++) { /* no text: EOT ignored */
            char *hit = strstr(q->text, q->stop[s]);
            if (hit) {
                q->text_len = q->safe_len = (size_t)(hit - q->text);
                q->text[q->text_len] = 0;
                stopped = 1;
            }
        }
        if (stopped)
            finish(e, q, TD_FINISH_STOP);
        else if (gen >= q->s.max_tokens || q->n >= e->maxT)
            finish(e, q, TD_FINISH_LENGTH);
    }
    int act = 0;
    for (int i = 0; i < e->nr; i++)
        act += e->r[i].state < TD_REQ_DONE;
    *active = act;
    return TD_OK;
}

td_req_state td_engine_state(const td_engine *e, int id) {
    return e->r[id].state;
}
td_finish td_engine_finish_reason(const td_engine *e, int id) {
    return e->r[id].finish;
}
void td_engine_cancel(td_engine *e, int id) {
    if (id < 0 || id >= e->nr || e->r[id].state >= TD_REQ_DONE) return;
    finish(e, &e->r[id], TD_FINISH_CANCEL);
}
void td_engine_release(td_engine *e, int id) {
    if (id < 0 || id >= e->nr || e->r[id].state != TD_REQ_DONE) return;
    req *q = &e->r[id];
    req_free_mem(q);
    memset(q, 0, sizeof *q);
    q->state = TD_REQ_FREE;
}
int td_engine_pending(const td_engine *e) {
    int n = 0;
    for (int i = 0; i < e->nr; i++)
        n += e->r[i].state != TD_REQ_FREE;
    return n;
}
int td_engine_prompt_tokens(const td_engine *e, int id) {
    return e->r[id].n_prompt;
}
const int32_t *td_engine_tokens(const td_engine *e, int id, int *n) {
    *n = e->r[id].n - e->r[id].n_prompt;
    return e->r[id].toks + e->r[id].n_prompt;
}
const char *td_engine_text(const td_engine *e, int id, size_t *len) {
    const req *q = &e->r[id];
    size_t n = q->state == TD_REQ_DONE ? q->text_len : q->safe_len;
    *len = n;
    return q->text ? q->text : "";
}
void td_engine_counters(const td_engine *e, uint64_t *steps, uint64_t *mixed_steps) {
    *steps = e->steps;
    *mixed_steps = e->mixed_steps;
}
size_t td_engine_free_blocks(const td_engine *e) {
    return e->n_free;
}
size_t td_engine_total_blocks(const td_engine *e) {
    return e->n_blocks;
}
