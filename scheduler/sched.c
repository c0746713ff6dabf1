/* The scheduler's decisions (see sched.h for the rules). */
#include "scheduler/sched.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *td_sched_verb_name(td_sched_verb v) {
    switch (v) {
    case TD_SCHED_START:
        return "start";
    case TD_SCHED_SCALE_UP:
        return "scale-up";
    case TD_SCHED_SCALE_DOWN:
        return "scale-down";
    case TD_SCHED_PREEMPT:
        return "preempt";
    }
    return "?";
}

int td_sched_pool_wants(const td_sched_job *p) {
    int per = p->per_replica_queue > 0 ? p->per_replica_queue : 1;
    int by_queue = p->queue_len > 0 ? (p->queue_len + per - 1) / per : 0;
    int w = p->want_replicas > by_queue ? p->want_replicas : by_queue;
    if (w > p->max_replicas) w = p->max_replicas;
    if (w < p->min_replicas) w = p->min_replicas;
    if (w > TD_SCHED_MAX_REPLICAS) w = TD_SCHED_MAX_REPLICAS;
    return w;
}

int td_sched_place_gang(const int *free, int n_hosts, int ranks, td_sched_place *place) {
    memset(place, 0, sizeof *place);
    if (ranks < 1) return 0;
    int total = 0;
    for (int h = 0; h < n_hosts; h++)
        total += free[h] > 0 ? free[h] : 0;
    if (total < ranks) return 0;
    /* the hosts with the most free slots first: the fewest hosts hold the gang */
    int left = ranks, used[TD_SCHED_MAX_HOSTS] = {0};
    while (left > 0) {
        int best = -1;
        for (int h = 0; h < n_hosts; h++)
            if (!used[h] && free[h] > 0 && (best < 0 || free[h] > free[best])) best = h;
        used[best] = 1;
        int take = free[best] < left ? free[best] : left;
        place->n[best] = take;
        left -= take;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------- */

typedef struct {
    const td_sched_job *job;
    int need; /* batch: 1; pool: replicas it lacks */
} demand;

static int demand_cmp(const void *a, const void *b) {
    const td_sched_job *x = ((const demand *)a)->job, *y = ((const demand *)b)->job;
    if (x->priority != y->priority) return x->priority > y->priority ? -1 : 1;
    if (x->seq != y->seq) return x->seq < y->seq ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

typedef struct {
    const td_sched_snapshot *s;
    td_sched_action *acts;
    int n, max;
    int free[TD_SCHED_MAX_HOSTS]; /* placeable now: 0 on draining hosts */
} planner;

static int hosts_of(const td_sched_snapshot *s) {
    return s->n_hosts < TD_SCHED_MAX_HOSTS ? s->n_hosts : TD_SCHED_MAX_HOSTS;
}

static void emit(planner *p, td_sched_action a) {
    if (p->n < p->max) p->acts[p->n++] = a;
}

static void take(planner *p, const td_sched_place *pl) {
    for (int h = 0; h < hosts_of(p->s); h++)
        p->free[h] -= pl->n[h];
}

/* Adds (sign 1) or removes (-1) a placement's slots to free, on hosts that take work. */
static void give(const td_sched_snapshot *s, int *free, const td_sched_place *pl, int sign) {
    for (int h = 0; h < hosts_of(s); h++)
        if (!s->hosts[h].draining) free[h] += sign * pl->n[h];
}

static void start(planner *p, const td_sched_job *j, const td_sched_place *pl, int backfilled) {
    td_sched_action a = {j->kind == TD_SCHED_POOL ? TD_SCHED_SCALE_UP : TD_SCHED_START,
                         j->id,
                         -1,
                         -1,
                         backfilled,
                         *pl};
    emit(p, a);
    take(p, pl);
}

/* ---- preemption (rule 3) ---- */

typedef struct {
    const td_sched_job *job;
    int replica; /* -1: the batch job itself */
    const td_sched_place *place;
    int dropped;
} victim;

static int victim_cmp(const void *a, const void *b) {
    const victim *x = a, *y = b;
    int xp = x->replica >= 0, yp = y->replica >= 0;
    if (xp != yp) return xp ? -1 : 1; /* pool replicas first */
    if (x->job->priority != y->job->priority) return x->job->priority < y->job->priority ? -1 : 1;
    if (xp) {
        if (x->job->id != y->job->id) return x->job->id < y->job->id ? -1 : 1;
        return y->replica - x->replica; /* newest replica first */
    }
    if (x->job->started_at != y->job->started_at) /* most recently started first */
        return x->job->started_at > y->job->started_at ? -1 : 1;
    return x->job->id < y->job->id ? -1 : 1;
}

/* Stops lower-priority work for head if that frees enough slots: emits the victims and
 * returns 1, or returns 0 having emitted nothing. */
static int preempt_for(planner *p, const td_sched_job *head) {
    const td_sched_snapshot *s = p->s;
    int nv = 0, cap = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->kind == TD_SCHED_POOL)
            cap += j->replicas;
        else
            cap++;
    }
    victim *v = calloc((size_t)cap + 1, sizeof *v);
    if (!v) return 0;
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->priority >= head->priority || j == head) continue;
        if (j->kind == TD_SCHED_POOL) {
            for (int r = j->replicas - 1; r >= j->min_replicas && r < TD_SCHED_MAX_REPLICAS; r--)
                v[nv++] = (victim){j, r, &j->replica[r], 0};
        } else if (j->state == TD_SCHED_RUNNING && j->preemptible) {
            v[nv++] = (victim){j, -1, &j->held, 0};
        }
    }
    qsort(v, (size_t)nv, sizeof *v, victim_cmp);
    int tmp[TD_SCHED_MAX_HOSTS], k = 0, fits = 0;
    td_sched_place pl;
    memcpy(tmp, p->free, sizeof tmp);
    for (; k < nv && !fits; k++) {
        give(s, tmp, v[k].place, 1);
        fits = td_sched_place_gang(tmp, hosts_of(s), head->ranks, &pl);
    }
    if (fits) {
        /* keep only the victims the head needs: drop, oldest choice first, any whose slots
         * the head can do without */
        for (int i = 0; i < k; i++) {
            give(s, tmp, v[i].place, -1);
            if (td_sched_place_gang(tmp, hosts_of(s), head->ranks, &pl))
                v[i].dropped = 1;
            else
                give(s, tmp, v[i].place, 1);
        }
        for (int i = 0; i < k; i++) {
            if (v[i].dropped) continue;
            td_sched_action a = {v[i].replica >= 0 ? TD_SCHED_SCALE_DOWN : TD_SCHED_PREEMPT,
                                 v[i].job->id,
                                 v[i].replica,
                                 head->id,
                                 0,
                                 {{0}}};
            emit(p, a);
        }
    }
    free(v);
    return fits;
}

/* ---- the reservation of a waiting head (rule 4) ---- */

typedef struct {
    double at;
    const td_sched_place *place;
} ending;

static int ending_cmp(const void *a, const void *b) {
    double x = ((const ending *)a)->at, y = ((const ending *)b)->at;
    return x < y ? -1 : x > y;
}

/* When the head could start as running batch jobs reach their limits: returns the time
 * (INFINITY if never by known limits), and in extra the slots free now that the head will
 * not need then. */
static double reserve(const planner *p, const td_sched_job *head, int *extra) {
    const td_sched_snapshot *s = p->s;
    memset(extra, 0, sizeof(int) * TD_SCHED_MAX_HOSTS);
    ending *e = calloc((size_t)s->n_jobs + 1, sizeof *e);
    if (!e) return INFINITY;
    int ne = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->kind != TD_SCHED_BATCH || j->state != TD_SCHED_RUNNING || !(j->limit_s > 0))
            continue;
        double at = j->started_at + j->limit_s;
        e[ne++] = (ending){at > s->now ? at : s->now, &j->held};
    }
    qsort(e, (size_t)ne, sizeof *e, ending_cmp);
    int then[TD_SCHED_MAX_HOSTS];
    memcpy(then, p->free, sizeof then);
    double at = INFINITY;
    td_sched_place pl;
    for (int i = 0; i < ne; i++) {
        give(s, then, e[i].place, 1);
        if (i + 1 < ne && e[i + 1].at == e[i].at) continue;
        if (td_sched_place_gang(then, hosts_of(s), head->ranks, &pl)) {
            at = e[i].at;
            break;
        }
    }
    free(e);
    if (isinf(at)) return at;
    for (int h = 0; h < hosts_of(s); h++) {
        int spare = then[h] - pl.n[h];
        int now = p->free[h];
        extra[h] = spare < now ? (spare > 0 ? spare : 0) : now;
    }
    return at;
}

int td_sched_plan(const td_sched_snapshot *s, td_sched_action *acts, int max) {
    planner p = {s, acts, 0, max, {0}};
    int H = hosts_of(s);
    for (int h = 0; h < H; h++)
        p.free[h] = s->hosts[h].slots;
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->kind == TD_SCHED_BATCH && j->state == TD_SCHED_RUNNING) take(&p, &j->held);
        for (int r = 0; j->kind == TD_SCHED_POOL && r < j->replicas && r < TD_SCHED_MAX_REPLICAS;
             r++)
            take(&p, &j->replica[r]);
    }
    for (int h = 0; h < H; h++)
        if (s->hosts[h].draining || p.free[h] < 0) p.free[h] = 0;

    /* rule 1: the demand, in order */
    demand *d = calloc((size_t)s->n_jobs + 1, sizeof *d);
    if (!d) return 0;
    int nd = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->kind == TD_SCHED_BATCH && j->state == TD_SCHED_QUEUED)
            d[nd++] = (demand){j, 1};
        else if (j->kind == TD_SCHED_POOL && td_sched_pool_wants(j) > j->replicas)
            d[nd++] = (demand){j, td_sched_pool_wants(j) - j->replicas};
    }
    qsort(d, (size_t)nd, sizeof *d, demand_cmp);

    /* rules 2-4 */
    int blocked = 0, extra[TD_SCHED_MAX_HOSTS];
    double shadow = INFINITY;
    td_sched_place pl;
    for (int i = 0; i < nd; i++) {
        const td_sched_job *j = d[i].job;
        for (; d[i].need > 0; d[i].need--) {
            if (!blocked) {
                if (td_sched_place_gang(p.free, H, j->ranks, &pl)) {
                    start(&p, j, &pl, 0);
                    continue;
                }
                if (preempt_for(&p, j)) {
                    free(d);
                    return p.n; /* the freed slots are the head's */
                }
                blocked = 1;
                shadow = reserve(&p, j, extra);
                break;
            }
            if (isinf(shadow) || !td_sched_place_gang(p.free, H, j->ranks, &pl)) break;
            if (j->kind == TD_SCHED_BATCH && j->limit_s > 0 && s->now + j->limit_s <= shadow) {
                start(&p, j, &pl, 1); /* ends before the head's reservation */
            } else if (td_sched_place_gang(extra, H, j->ranks, &pl)) {
                for (int h = 0; h < H; h++)
                    extra[h] -= pl.n[h];
                start(&p, j, &pl, 1); /* on slots the head will not need */
            } else {
                break;
            }
            for (int h = 0; h < H; h++) /* what it took is no longer spare */
                if (extra[h] > p.free[h]) extra[h] = p.free[h];
        }
    }
    free(d);

    /* rule 5: idle pools give back replicas above what they want, newest first */
    for (int i = 0; i < s->n_jobs; i++) {
        const td_sched_job *j = &s->jobs[i];
        if (j->kind != TD_SCHED_POOL) continue;
        for (int r = j->replicas - 1; r >= td_sched_pool_wants(j); r--) {
            td_sched_action a = {TD_SCHED_SCALE_DOWN, j->id, r, -1, 0, {{0}}};
            emit(&p, a);
        }
    }
    return p.n;
}
