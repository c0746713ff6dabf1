/* The scheduler's decisions, table-driven: each case is a pool (hosts a, b, c, ... with
 * their slots), a job table and the clock, and the actions td_sched_plan must return,
 * written as text ("start 1 @a2,b1; scale-down 5 r1 for 2"; "bf" marks a backfill). */
#include <string.h>

#include "scheduler/sched.h"
#include "tests/test.h"

#define B TD_SCHED_BATCH
#define P TD_SCHED_POOL
#define QUEUED TD_SCHED_QUEUED
#define RUNNING TD_SCHED_RUNNING

/* queued batch job: id, priority, seq, ranks, limit */
#define Q(id_, pri, seq_, r, lim)                                                                  \
    {                                                                                              \
        .id = id_, .kind = B, .state = QUEUED, .priority = pri, .seq = seq_, .ranks = r,           \
        .limit_s = lim                                                                             \
    }
/* running batch job: id, priority, ranks, started_at, limit, preemptible, slots per host */
#define RUN(id_, pri, r, t0, lim, pre, ...)                                                        \
    {                                                                                              \
        .id = id_, .kind = B, .state = RUNNING, .priority = pri, .ranks = r, .started_at = t0,     \
        .limit_s = lim, .preemptible = pre, .held = {                                              \
            {__VA_ARGS__}                                                                          \
        }                                                                                          \
    }
/* serving pool: id, priority, ranks per replica, replicas, min, max, want, queue, per replica;
 * then .replica = {...} */
#define POOL(id_, pri, r, n, mn, mx, w, q, per)                                                    \
    .id = id_, .kind = P, .priority = pri, .ranks = r, .replicas = n, .min_replicas = mn,          \
    .max_replicas = mx, .want_replicas = w, .queue_len = q, .per_replica_queue = per
#define PL(...)                                                                                    \
    {                                                                                              \
        { __VA_ARGS__ }                                                                            \
    }

typedef struct {
    const char *name;
    int nh;
    int slots[4];
    int draining[4];
    double now;
    int nj;
    td_sched_job jobs[6];
    const char *want;
} tcase;

static const tcase k_cases[] = {
    /* ---- gang placement ---- */
    {"a job that fits starts", 1, {2}, {0}, 0, 1, {Q(1, 0, 1, 2, 0)}, "start 1 @a2"},
    {"a gang waits for all its slots",
     1,
     {2},
     {0},
     0,
     2,
     {RUN(9, 0, 1, 0, 0, 0, 1), Q(1, 0, 1, 2, 0)},
     ""},
    {"a gang spans hosts", 2, {2, 2}, {0}, 0, 1, {Q(1, 0, 1, 4, 0)}, "start 1 @a2,b2"},
    {"on the fewest hosts", 3, {1, 3, 2}, {0}, 0, 1, {Q(1, 0, 1, 3, 0)}, "start 1 @b3"},
    {"several start in order",
     1,
     {4},
     {0},
     0,
     3,
     {Q(1, 0, 1, 2, 0), Q(2, 0, 2, 1, 0), Q(3, 0, 3, 1, 0)},
     "start 1 @a2; start 2 @a1; start 3 @a1"},
    {"a draining host takes nothing new",
     2,
     {2, 2},
     {1, 0},
     0,
     1,
     {Q(1, 0, 1, 2, 0)},
     "start 1 @b2"},
    {"only draining hosts: the job waits", 1, {2}, {1}, 0, 1, {Q(1, 0, 1, 1, 0)}, ""},
    /* ---- order ---- */
    {"higher priority first",
     1,
     {2},
     {0},
     0,
     2,
     {Q(1, 0, 1, 2, 0), Q(2, 5, 2, 2, 0)},
     "start 2 @a2"},
    {"first come first served among equals",
     1,
     {2},
     {0},
     0,
     2,
     {Q(1, 0, 2, 2, 0), Q(2, 0, 1, 2, 0)},
     "start 2 @a2"},
    /* ---- backfill ---- */
    {"a short job backfills before the head's reservation",
     1,
     {4},
     {0},
     10,
     3,
     {RUN(9, 0, 2, 0, 100, 0, 2), Q(1, 0, 1, 4, 0), Q(2, 0, 2, 2, 50)},
     "start 2 @a2 bf"},
    {"a job that would delay the head does not backfill",
     1,
     {4},
     {0},
     10,
     3,
     {RUN(9, 0, 2, 0, 100, 0, 2), Q(1, 0, 1, 4, 0), Q(2, 0, 2, 2, 200)},
     ""},
    {"a long job backfills onto slots the head will not need",
     1,
     {6},
     {0},
     10,
     4,
     {RUN(9, 0, 2, 0, 100, 0, 2), Q(1, 0, 1, 5, 0), Q(2, 0, 2, 1, 0), Q(3, 0, 3, 1, 0)},
     "start 2 @a1 bf"},
    {"no reservation time (a running job without a limit): nothing backfills",
     1,
     {4},
     {0},
     10,
     3,
     {RUN(9, 0, 2, 0, 0, 0, 2), Q(1, 0, 1, 4, 0), Q(2, 0, 2, 1, 5)},
     ""},
    {"an overdue job counts as ending now",
     1,
     {4},
     {0},
     500,
     3,
     {RUN(9, 0, 2, 0, 100, 0, 2), Q(1, 0, 1, 4, 0), Q(2, 0, 2, 2, 1)},
     ""},
    /* ---- preemption ---- */
    {"a training job takes a replica above the pool's minimum",
     1,
     {2},
     {0},
     0,
     2,
     {{POOL(5, 0, 1, 2, 1, 2, 2, 0, 4), .replica = {PL(1), PL(1)}}, Q(1, 10, 1, 1, 0)},
     "scale-down 5 r1 for 1"},
    {"a pool at its minimum is kept; a lower-priority training job is stopped",
     1,
     {2},
     {0},
     0,
     3,
     {{POOL(5, 0, 1, 1, 1, 2, 1, 0, 4), .replica = {PL(1)}},
      RUN(7, 0, 1, 0, 0, 1, 1),
      Q(1, 10, 1, 1, 0)},
     "preempt 7 for 1"},
    {"a replica above the minimum goes before a training job",
     1,
     {3},
     {0},
     0,
     3,
     {RUN(7, 0, 1, 0, 0, 1, 1),
      {POOL(5, 0, 1, 2, 1, 2, 2, 0, 4), .replica = {PL(1), PL(1)}},
      Q(1, 10, 1, 1, 0)},
     "scale-down 5 r1 for 1"},
    {"equal priority does not preempt",
     1,
     {1},
     {0},
     0,
     2,
     {RUN(7, 5, 1, 0, 0, 1, 1), Q(1, 5, 1, 1, 0)},
     ""},
    {"a job that cannot checkpoint is not preempted",
     1,
     {1},
     {0},
     0,
     2,
     {RUN(7, 0, 1, 0, 0, 0, 1), Q(1, 10, 1, 1, 0)},
     ""},
    {"the victim: lowest priority, then the most recently started",
     1,
     {3},
     {0},
     30,
     4,
     {RUN(7, 2, 1, 10, 0, 1, 1), RUN(8, 1, 1, 5, 0, 1, 1), RUN(9, 1, 1, 20, 0, 1, 1),
      Q(1, 10, 1, 1, 0)},
     "preempt 9 for 1"},
    {"nobody is stopped when the victims would not free enough",
     1,
     {2},
     {0},
     0,
     3,
     {RUN(7, 0, 1, 0, 0, 1, 1), RUN(8, 20, 1, 0, 0, 1, 1), Q(1, 10, 1, 2, 0)},
     ""},
    {"only the victims the head needs",
     1,
     {5},
     {0},
     0,
     3,
     {{POOL(5, 0, 1, 2, 1, 2, 2, 0, 4), .replica = {PL(1), PL(1)}},
      RUN(7, 0, 3, 0, 0, 1, 3),
      Q(1, 10, 1, 3, 0)},
     "preempt 7 for 1"},
    {"freed slots on a draining host do not count",
     2,
     {1, 1},
     {1, 0},
     0,
     3,
     {RUN(7, 0, 1, 20, 0, 1, 1, 0), RUN(8, 0, 1, 9, 0, 1, 0, 1), Q(1, 10, 1, 1, 0)},
     "preempt 8 for 1"},
    /* ---- serving pools ---- */
    {"a pool grows with its queue",
     1,
     {4},
     {0},
     0,
     1,
     {{POOL(5, 0, 1, 1, 1, 3, 1, 10, 4), .replica = {PL(1)}}},
     "scale-up 5 @a1; scale-up 5 @a1"},
    {"up to its maximum",
     1,
     {4},
     {0},
     0,
     1,
     {{POOL(5, 0, 1, 1, 1, 2, 1, 100, 4), .replica = {PL(1)}}},
     "scale-up 5 @a1"},
    {"an idle pool gives back its newest replicas",
     1,
     {4},
     {0},
     0,
     1,
     {{POOL(5, 0, 1, 3, 1, 3, 1, 0, 4), .replica = {PL(1), PL(1), PL(1)}}},
     "scale-down 5 r2 -; scale-down 5 r1 -"},
    {"a pool grows back to what it wants when slots free up",
     1,
     {2},
     {0},
     0,
     1,
     {{POOL(5, 0, 1, 1, 1, 2, 2, 0, 4), .replica = {PL(1)}}},
     "scale-up 5 @a1"},
    {"a tensor-parallel replica is a gang",
     2,
     {1, 1},
     {0},
     0,
     1,
     {{POOL(5, 0, 2, 0, 1, 1, 1, 0, 4)}},
     "scale-up 5 @a1,b1"},
    {"a pool's replicas wait behind a higher-priority job",
     1,
     {2},
     {0},
     0,
     2,
     {{POOL(5, 0, 1, 0, 1, 2, 2, 0, 4)}, Q(1, 3, 1, 2, 0)},
     "start 1 @a2"},
};

static void describe(const td_sched_action *a, int n, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s %d", i ? "; " : "", td_sched_verb_name(a[i].verb),
                 a[i].job);
        l = strlen(out);
        if (a[i].verb == TD_SCHED_START || a[i].verb == TD_SCHED_SCALE_UP) {
            snprintf(out + l, cap - l, " @");
            for (int h = 0, first = 1; h < TD_SCHED_MAX_HOSTS; h++) {
                if (!a[i].place.n[h]) continue;
                l = strlen(out);
                snprintf(out + l, cap - l, "%s%c%d", first ? "" : ",", 'a' + h, a[i].place.n[h]);
                first = 0;
            }
            if (a[i].backfilled) strncat(out, " bf", cap - strlen(out) - 1);
        } else if (a[i].verb == TD_SCHED_SCALE_DOWN) {
            l = strlen(out);
            if (a[i].for_job >= 0)
                snprintf(out + l, cap - l, " r%d for %d", a[i].replica, a[i].for_job);
            else
                snprintf(out + l, cap - l, " r%d -", a[i].replica);
        } else {
            l = strlen(out);
            snprintf(out + l, cap - l, " for %d", a[i].for_job);
        }
    }
}

int main(void) {
    int n = (int)(sizeof k_cases / sizeof *k_cases);
    for (int c = 0; c < n; c++) {
        const tcase *t = &k_cases[c];
        td_sched_host hosts[4];
        static const char *names[] = {"a", "b", "c", "d"};
        for (int h = 0; h < t->nh; h++)
            hosts[h] = (td_sched_host){names[h], t->slots[h], t->draining[h]};
        td_sched_snapshot s = {hosts, t->nh, t->jobs, t->nj, t->now};
        td_sched_action acts[16];
        int na = td_sched_plan(&s, acts, 16);
        char got[512];
        describe(acts, na, got, sizeof got);
        CHECK(!strcmp(got, t->want), "%s: got \"%s\", want \"%s\"", t->name, got, t->want);
        printf("%-75s %s\n", t->name, got[0] ? got : "(waits)");
    }

    /* the pool's wanted count and the placement on their own */
    td_sched_job p = {POOL(1, 0, 1, 0, 2, 5, 1, 0, 4)};
    CHECK(td_sched_pool_wants(&p) == 2, "below min: %d", td_sched_pool_wants(&p));
    p.queue_len = 13;
    CHECK(td_sched_pool_wants(&p) == 4, "13 queued, 4 each: %d", td_sched_pool_wants(&p));
    p.queue_len = 1000;
    CHECK(td_sched_pool_wants(&p) == 5, "at most max: %d", td_sched_pool_wants(&p));
    p.per_replica_queue = 0, p.queue_len = 3;
    CHECK(td_sched_pool_wants(&p) == 3, "per replica 0 counts as 1: %d", td_sched_pool_wants(&p));
    int free3[3] = {1, 0, 2};
    td_sched_place pl;
    CHECK(!td_sched_place_gang(free3, 3, 4, &pl), "4 ranks on 3 free slots");
    CHECK(!td_sched_place_gang(free3, 3, 0, &pl), "a gang of 0 ranks");
    CHECK(td_sched_place_gang(free3, 3, 3, &pl) && pl.n[0] == 1 && pl.n[2] == 2,
          "3 ranks on a1 c2: %d %d %d", pl.n[0], pl.n[1], pl.n[2]);

    /* a full action buffer stops the plan without overrunning it */
    td_sched_host one = {"a", 8, 0};
    td_sched_job many[4] = {Q(1, 0, 1, 1, 0), Q(2, 0, 2, 1, 0), Q(3, 0, 3, 1, 0), Q(4, 0, 4, 1, 0)};
    td_sched_snapshot s = {&one, 1, many, 4, 0};
    td_sched_action two[3];
    two[2].job = -77;
    CHECK(td_sched_plan(&s, two, 2) == 2 && two[2].job == -77, "wrote past the buffer");
    printf("%d cases\n", n);
    return test_done("test_sched");
}
