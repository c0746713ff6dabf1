/* The job table (see jobs.h). */
#include "coordinator/jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/json.h"

#define MAX_DRAINING 64

struct td_jobs {
    td_job *v;
    size_t n, cap;
    long next_id;
    char draining[MAX_DRAINING][256];
    int n_draining;
};

int td_jobs_host_draining(const td_jobs *t, const char *host) {
    for (int i = 0; i < t->n_draining; i++)
        if (!strcmp(t->draining[i], host)) return 1;
    return 0;
}

const char *td_jobs_draining_at(const td_jobs *t, int i) {
    return i >= 0 && i < t->n_draining ? t->draining[i] : NULL;
}

static const char *const k_kinds[] = {"prep",  "train", "finetune", "distill",
                                      "serve", "bench", NULL};

const char *td_job_state_name(td_job_state s) {
    switch (s) {
    case TD_JOB_QUEUED:
        return "queued";
    case TD_JOB_RUNNING:
        return "running";
    case TD_JOB_DONE:
        return "done";
    case TD_JOB_FAILED:
        return "failed";
    case TD_JOB_CANCELLED:
        return "cancelled";
    }
    return "?";
}

int td_job_state_final(td_job_state s) {
    return s == TD_JOB_DONE || s == TD_JOB_FAILED || s == TD_JOB_CANCELLED;
}

td_status td_jobs_new(td_jobs **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return td_error_set(TD_ERR_NOMEM, "out of memory");
    (*out)->next_id = 1;
    return TD_OK;
}

void td_jobs_free(td_jobs **tp) {
    td_jobs *t = *tp;
    if (!t) return;
    free(t->v);
    free(t);
    *tp = NULL;
}

long td_jobs_next_id(const td_jobs *t) {
    return t->next_id;
}
int td_jobs_count(const td_jobs *t) {
    return (int)t->n;
}
const td_job *td_jobs_at(const td_jobs *t, int i) {
    return i >= 0 && (size_t)i < t->n ? &t->v[i] : NULL;
}
const td_job *td_jobs_find(const td_jobs *t, long id) {
    /* ids are given in order from 1: job id sits at index id - 1 */
    return id >= 1 && (size_t)id <= t->n ? &t->v[id - 1] : NULL;
}

/* ---------------------------------------------------------------------------------------- */

static td_status copy_str(const cJSON *ev, const char *where, const char *key, int required,
                          char *dst, size_t cap) {
    const char *s = NULL;
    TD_TRY(td_json_get_string(ev, where, key, required, &s));
    if (!s) return TD_OK;
    if (strlen(s) >= cap)
        return td_error_set(TD_ERR_FORMAT, "%s.%s: longer than %zu bytes", where, key, cap - 1);
    snprintf(dst, cap, "%s", s);
    return TD_OK;
}

static td_status get_intv(const cJSON *ev, const char *where, const char *key, int required,
                          long lo, long hi, long *out) {
    int64_t v = *out;
    TD_TRY(td_json_get_int(ev, where, key, required, &v));
    if (v < lo || v > hi)
        return td_error_set(TD_ERR_FORMAT, "%s.%s: %lld is outside [%ld, %ld]", where, key,
                            (long long)v, lo, hi);
    *out = (long)v;
    return TD_OK;
}

static td_status submit(td_jobs *t, const cJSON *ev, const char *where, long id, double at) {
    if (id != t->next_id)
        return td_error_set(TD_ERR_FORMAT, "%s: submit of job %ld, but the next id is %ld", where,
                            id, t->next_id);
    td_job j = {.id = id, .state = TD_JOB_QUEUED, .submitted_at = at, .rc = -1};
    long ranks = 0, prio = 0, restarts = 0;
    TD_TRY(copy_str(ev, where, "kind", 1, j.kind, sizeof j.kind));
    int known = 0;
    for (int k = 0; k_kinds[k]; k++)
        known |= !strcmp(k_kinds[k], j.kind);
    if (!known) return td_error_set(TD_ERR_FORMAT, "%s.kind: \"%s\" is not a stage", where, j.kind);
    TD_TRY(copy_str(ev, where, "file", 1, j.file, sizeof j.file));
    TD_TRY(copy_str(ev, where, "dir", 1, j.dir, sizeof j.dir));
    TD_TRY(get_intv(ev, where, "ranks", 1, 1, 1 << 20, &ranks));
    TD_TRY(get_intv(ev, where, "priority", 0, -1000000, 1000000, &prio));
    TD_TRY(get_intv(ev, where, "max_restarts", 0, 0, 1000, &restarts));
    TD_TRY(td_json_get_double(ev, where, "limit_s", 0, &j.limit_s));
    if (!(j.limit_s >= 0))
        return td_error_set(TD_ERR_FORMAT, "%s.limit_s: must not be negative", where);
    j.ranks = (int)ranks, j.priority = (int)prio, j.max_restarts = (int)restarts;
    TD_TRY(copy_str(ev, where, "pipeline", 0, j.pipeline, sizeof j.pipeline));
    TD_TRY(copy_str(ev, where, "stage", 0, j.stage, sizeof j.stage));
    const cJSON *after = cJSON_GetObjectItemCaseSensitive(ev, "after");
    if (after && (!cJSON_IsArray(after) || cJSON_GetArraySize(after) > TD_JOB_MAX_AFTER))
        return td_error_set(TD_ERR_FORMAT, "%s.after: a list of at most %d job ids", where,
                            TD_JOB_MAX_AFTER);
    for (const cJSON *e = after ? after->child : NULL; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble >= (double)id ||
            e->valuedouble != (double)(long)e->valuedouble)
            return td_error_set(TD_ERR_FORMAT, "%s.after: each an id of an earlier job", where);
        j.after[j.n_after++] = (long)e->valuedouble;
    }
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(ev, "inputs");
    if (in && (!cJSON_IsObject(in) || cJSON_GetArraySize(in) > TD_JOB_MAX_INPUTS))
        return td_error_set(TD_ERR_FORMAT, "%s.inputs: an object of at most %d keys", where,
                            TD_JOB_MAX_INPUTS);
    for (const cJSON *e = in ? in->child : NULL; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble >= (double)id ||
            strlen(e->string) >= sizeof j.input_key[0] || !e->string[0])
            return td_error_set(TD_ERR_FORMAT, "%s.inputs.%s: an id of an earlier job", where,
                                e->string);
        snprintf(j.input_key[j.n_inputs], sizeof j.input_key[0], "%s", e->string);
        j.input_from[j.n_inputs++] = (long)e->valuedouble;
    }
    long pmin = 0, pmax = 0, pwant = 0, pq = 4;
    TD_TRY(get_intv(ev, where, "pool_min", 0, 0, TD_JOB_MAX_REPLICAS, &pmin));
    TD_TRY(get_intv(ev, where, "pool_max", 0, 0, TD_JOB_MAX_REPLICAS, &pmax));
    TD_TRY(get_intv(ev, where, "pool_replicas", 0, 0, TD_JOB_MAX_REPLICAS, &pwant));
    TD_TRY(get_intv(ev, where, "pool_per_queue", 0, 1, 1 << 20, &pq));
    if (pmax > 0 && (strcmp(j.kind, "serve") || pmin > pmax || pwant > pmax))
        return td_error_set(TD_ERR_FORMAT,
                            "%s: a pool is a serve job with pool_min <= "
                            "pool_replicas <= pool_max",
                            where);
    j.pool_min = (int)pmin, j.pool_max = (int)pmax, j.pool_per_queue = (int)pq;
    j.pool_want = (int)(pwant > pmin ? pwant : pmin);
    TD_TRY(TD_GROW(t->v, t->cap, t->n + 1));
    t->v[t->n++] = j;
    t->next_id++;
    return TD_OK;
}

static td_replica_run *replica_of(td_job *j, long seq) {
    for (int i = 0; i < j->n_rep; i++)
        if (j->rep[i].seq == seq) return &j->rep[i];
    return NULL;
}

/* The events of a pool's replicas (see jobs.h). */
static td_status replica_event(td_job *j, const cJSON *ev, const char *where, const char *kind,
                               double at) {
    long seq = 0, pid = 0, rc = 0;
    TD_TRY(get_intv(ev, where, "replica", 1, 1, 1L << 30, &seq));
    td_replica_run *r = replica_of(j, seq);
    if (!strcmp(kind, "rstart")) {
        TD_TRY(get_intv(ev, where, "pid", 0, 0, 1L << 31, &pid));
        if (r || seq != j->rep_seq + 1 || j->n_rep >= TD_JOB_MAX_REPLICAS || j->cancel_asked ||
            j->failing)
            return td_error_set(TD_ERR_FORMAT, "%s: replica %ld of job %ld cannot start now", where,
                                seq, j->id);
        j->rep[j->n_rep++] = (td_replica_run){.seq = (int)seq, .pid = pid, .started_at = at};
        j->rep_seq = (int)seq;
        j->attempt = (int)seq;
        if (j->state == TD_JOB_QUEUED) j->started_at = at;
        j->state = TD_JOB_RUNNING;
        return TD_OK;
    }
    if (!r) return td_error_set(TD_ERR_FORMAT, "%s: job %ld has no replica %ld", where, j->id, seq);
    if (!strcmp(kind, "rpid")) {
        TD_TRY(get_intv(ev, where, "pid", 1, 1, 1L << 31, &pid));
        r->pid = pid;
        return TD_OK;
    }
    if (!strcmp(kind, "rstop")) {
        r->stopping = 1;
        return TD_OK;
    }
    if (!strcmp(kind, "rexit")) {
        TD_TRY(get_intv(ev, where, "rc", 1, -1024, 1024, &rc));
        char reason[sizeof j->reason] = "";
        TD_TRY(copy_str(ev, where, "reason", 0, reason, sizeof reason));
        int called_for = r->stopping || j->cancel_asked || j->failing;
        *r = j->rep[--j->n_rep]; /* order does not matter: the newest is found by seq */
        j->rc = (int)rc;
        snprintf(j->reason, sizeof j->reason, "replica %ld: %s", seq, reason);
        if (!called_for) {
            if (j->restarts >= j->max_restarts)
                j->failing = 1; /* the others are stopped; the pool fails with the last */
            else
                j->restarts++;
        }
        if (j->n_rep == 0) {
            if (j->cancel_asked || j->failing) {
                j->state = j->cancel_asked ? TD_JOB_CANCELLED : TD_JOB_FAILED;
                j->ended_at = at;
            } else {
                j->state = TD_JOB_QUEUED; /* no replica now: the scheduler starts one */
            }
        }
        return TD_OK;
    }
    return td_error_set(TD_ERR_FORMAT, "journal event \"%s\": not an event of the job table", kind);
}

td_status td_jobs_apply(td_jobs *t, const cJSON *ev) {
    const char *kind = NULL;
    char where[64] = "journal event";
    TD_TRY(td_json_get_string(ev, where, "event", 1, &kind));
    snprintf(where, sizeof where, "%s event", kind);
    if (!strcmp(kind, "drain") || !strcmp(kind, "undrain")) {
        char host[256];
        TD_TRY(copy_str(ev, where, "host", 1, host, sizeof host));
        int at = -1;
        for (int i = 0; i < t->n_draining; i++)
            if (!strcmp(t->draining[i], host)) at = i;
        if (kind[0] == 'd' && at < 0) {
            if (t->n_draining >= MAX_DRAINING)
                return td_error_set(TD_ERR_FORMAT, "%s: more than %d draining hosts", where,
                                    MAX_DRAINING);
            snprintf(t->draining[t->n_draining++], sizeof t->draining[0], "%s", host);
        } else if (kind[0] == 'u' && at >= 0) {
            if (at != --t->n_draining)
                memcpy(t->draining[at], t->draining[t->n_draining], sizeof t->draining[0]);
        }
        return TD_OK;
    }
    long id = 0;
    double at = 0;
    TD_TRY(get_intv(ev, where, "id", 1, 1, 1L << 40, &id));
    TD_TRY(td_json_get_double(ev, where, "at", 1, &at));
    if (!strcmp(kind, "submit")) return submit(t, ev, where, id, at);

    td_job *j = id >= 1 && (size_t)id <= t->n ? &t->v[id - 1] : NULL;
    if (!j) return td_error_set(TD_ERR_FORMAT, "%s: no job %ld", where, id);
    if (td_job_state_final(j->state))
        return td_error_set(TD_ERR_FORMAT, "%s: job %ld has ended (%s)", where, id,
                            td_job_state_name(j->state));
    if (!strcmp(kind, "start")) {
        long attempt = 0, pid = 0;
        TD_TRY(get_intv(ev, where, "attempt", 1, 1, 1 << 20, &attempt));
        TD_TRY(get_intv(ev, where, "pid", 0, 0, 1L << 31, &pid));
        char hosts[sizeof j->hosts] = "";
        TD_TRY(copy_str(ev, where, "hosts", 0, hosts, sizeof hosts));
        if (j->state != TD_JOB_QUEUED)
            return td_error_set(TD_ERR_FORMAT, "%s: job %ld is %s, not queued", where, id,
                                td_job_state_name(j->state));
        if (attempt != j->attempt + 1)
            return td_error_set(TD_ERR_FORMAT, "%s: attempt %ld of job %ld, expected %d", where,
                                attempt, id, j->attempt + 1);
        j->state = TD_JOB_RUNNING;
        j->attempt = (int)attempt;
        j->pid = pid;
        j->started_at = at;
        snprintf(j->hosts, sizeof j->hosts, "%s", hosts);
        return TD_OK;
    }
    if (!strcmp(kind, "exit")) {
        long attempt = 0, rc = 0;
        const char *then = NULL;
        TD_TRY(get_intv(ev, where, "attempt", 1, 1, 1 << 20, &attempt));
        TD_TRY(get_intv(ev, where, "rc", 1, -1024, 1024, &rc));
        TD_TRY(td_json_get_string(ev, where, "then", 1, &then));
        char reason[sizeof j->reason] = "";
        TD_TRY(copy_str(ev, where, "reason", 0, reason, sizeof reason));
        if (j->state != TD_JOB_RUNNING || attempt != j->attempt)
            return td_error_set(TD_ERR_FORMAT, "%s: job %ld attempt %ld is not running", where, id,
                                attempt);
        td_job_state next;
        if (!strcmp(then, "done"))
            next = TD_JOB_DONE;
        else if (!strcmp(then, "failed"))
            next = TD_JOB_FAILED;
        else if (!strcmp(then, "cancelled"))
            next = TD_JOB_CANCELLED;
        else if (!strcmp(then, "queued"))
            next = TD_JOB_QUEUED;
        else
            return td_error_set(TD_ERR_FORMAT,
                                "%s.then: \"%s\" (done, failed, cancelled or queued)", where, then);
        if (next == TD_JOB_QUEUED && j->cancel_asked)
            return td_error_set(TD_ERR_FORMAT, "%s: job %ld was cancelled, not to be queued again",
                                where, id);
        if (next == TD_JOB_QUEUED && !j->preempting) {
            if (j->restarts >= j->max_restarts)
                return td_error_set(TD_ERR_FORMAT, "%s: job %ld has used its %d restarts", where,
                                    id, j->max_restarts);
            j->restarts++;
        }
        j->state = next;
        j->rc = (int)rc;
        j->pid = 0;
        j->preempting = 0;
        j->ended_at = at;
        snprintf(j->reason, sizeof j->reason, "%s", reason);
        return TD_OK;
    }
    if (!strcmp(kind, "pid")) {
        long attempt = 0, pid = 0;
        TD_TRY(get_intv(ev, where, "attempt", 1, 1, 1 << 20, &attempt));
        TD_TRY(get_intv(ev, where, "pid", 1, 1, 1L << 31, &pid));
        if (j->state != TD_JOB_RUNNING || attempt != j->attempt)
            return td_error_set(TD_ERR_FORMAT, "%s: job %ld attempt %ld is not running", where, id,
                                attempt);
        j->pid = pid;
        return TD_OK;
    }
    if (!strcmp(kind, "cancel")) {
        char reason[sizeof j->reason] = "";
        TD_TRY(copy_str(ev, where, "reason", 0, reason, sizeof reason));
        j->cancel_asked = 1;
        if (j->state == TD_JOB_QUEUED) {
            j->state = TD_JOB_CANCELLED;
            j->ended_at = at;
            snprintf(j->reason, sizeof j->reason, "%s",
                     reason[0] ? reason : "cancelled while queued");
        }
        return TD_OK;
    }
    if (!strcmp(kind, "preempt")) {
        if (j->state != TD_JOB_RUNNING)
            return td_error_set(TD_ERR_FORMAT, "%s: job %ld is %s, not running", where, id,
                                td_job_state_name(j->state));
        j->preempting = 1;
        return TD_OK;
    }
    if (!strncmp(kind, "r", 1) && j->pool_max > 0) return replica_event(j, ev, where, kind, at);
    return td_error_set(TD_ERR_FORMAT, "journal event \"%s\": not an event of the job table", kind);
}
