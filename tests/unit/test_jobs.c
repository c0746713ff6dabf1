/* The job table: event sequences give the states they must (table-driven: each case is a
 * list of events, one per line, the last of which may be refused, and the expected states);
 * a table rebuilt from its journal equals the table that wrote it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/jobs.h"
#include "coordinator/journal.h"
#include "tests/test.h"

#define SUB(id)                                                                                    \
    "{\"event\":\"submit\",\"id\":" #id ",\"at\":1,\"kind\":\"train\",\"file\":\"j.json\","        \
    "\"dir\":\"/tmp\",\"ranks\":2,\"max_restarts\":1}"
#define START(id, a)                                                                               \
    "{\"event\":\"start\",\"id\":" #id ",\"at\":2,\"attempt\":" #a                                 \
    ",\"pid\":4242,\"hosts\":\"a:2\"}"
#define EXIT(id, a, rc, then)                                                                      \
    "{\"event\":\"exit\",\"id\":" #id ",\"at\":3,\"attempt\":" #a ",\"rc\":" #rc                   \
    ",\"then\":\"" then "\"}"
#define CANCEL(id) "{\"event\":\"cancel\",\"id\":" #id ",\"at\":4}"
#define PREEMPT(id) "{\"event\":\"preempt\",\"id\":" #id ",\"at\":5}"
/* a serving pool: replicas between 1 and 2, one restart */
#define POOL(id)                                                                                   \
    "{\"event\":\"submit\",\"id\":" #id ",\"at\":1,\"kind\":\"serve\",\"file\":\"s.json\","        \
    "\"dir\":\"/tmp\",\"ranks\":1,\"max_restarts\":1,\"pool_min\":1,\"pool_max\":2,"               \
    "\"pool_replicas\":2}"
#define RSTART(id, r) "{\"event\":\"rstart\",\"id\":" #id ",\"at\":2,\"replica\":" #r ",\"pid\":0}"
#define RSTOP(id, r) "{\"event\":\"rstop\",\"id\":" #id ",\"at\":3,\"replica\":" #r "}"
#define REXIT(id, r, rc)                                                                           \
    "{\"event\":\"rexit\",\"id\":" #id ",\"at\":4,\"replica\":" #r ",\"rc\":" #rc                  \
    ",\"reason\":\"x\"}"
/* a pipeline's stage: waits for the jobs in AFTER, takes data.train from job FROM */
#define STAGE(id, after, from)                                                                     \
    "{\"event\":\"submit\",\"id\":" #id ",\"at\":1,\"kind\":\"train\",\"file\":\"t.json\","        \
    "\"dir\":\"/tmp\",\"ranks\":1,\"pipeline\":\"p\",\"stage\":\"s" #id "\",\"after\":" after      \
    ",\"inputs\":{\"data.train\":" #from "}}"

typedef struct {
    const char *name;
    const char *events[8];
    int refused_last; /* 1: the last event must be refused */
    const char *want; /* states of jobs 1, 2, ... */
} tcase;

static const tcase k_cases[] = {
    {"submit queues", {SUB(1)}, 0, "queued"},
    {"start runs", {SUB(1), START(1, 1)}, 0, "running"},
    {"exit 0 is done", {SUB(1), START(1, 1), EXIT(1, 1, 0, "done")}, 0, "done"},
    {"a failure restarts within max_restarts",
     {SUB(1), START(1, 1), EXIT(1, 1, 1, "queued"), START(1, 2)},
     0,
     "running"},
    {"beyond max_restarts is refused",
     {SUB(1), START(1, 1), EXIT(1, 1, 1, "queued"), START(1, 2), EXIT(1, 2, 1, "queued")},
     1,
     "running"},
    {"the last failure fails", {SUB(1), START(1, 1), EXIT(1, 1, 9, "failed")}, 0, "failed"},
    {"a queued job cancels at once", {SUB(1), SUB(2), CANCEL(2)}, 0, "queued cancelled"},
    {"a running job cancels at its exit", {SUB(1), START(1, 1), CANCEL(1)}, 0, "running"},
    {"... and then is cancelled",
     {SUB(1), START(1, 1), CANCEL(1), EXIT(1, 1, 143, "cancelled")},
     0,
     "cancelled"},
    {"a cancelled job is not requeued",
     {SUB(1), START(1, 1), CANCEL(1), EXIT(1, 1, 1, "queued")},
     1,
     "running"},
    {"preemption requeues without using a restart",
     {SUB(1), START(1, 1), PREEMPT(1), EXIT(1, 1, 0, "queued"), START(1, 2), PREEMPT(1),
      EXIT(1, 2, 0, "queued")},
     0,
     "queued"},
    {"ids come in order", {SUB(1), SUB(3)}, 1, "queued"},
    {"no such job", {SUB(1), START(2, 1)}, 1, "queued"},
    {"a running job does not start again", {SUB(1), START(1, 1), START(1, 2)}, 1, "running"},
    {"the exit of another attempt", {SUB(1), START(1, 1), EXIT(1, 2, 0, "done")}, 1, "running"},
    {"nothing follows the end",
     {SUB(1), START(1, 1), EXIT(1, 1, 0, "done"), START(1, 2)},
     1,
     "done"},
    {"preempting a queued job", {SUB(1), PREEMPT(1)}, 1, "queued"},
    {"a start's pid comes later",
     {SUB(1), "{\"event\":\"start\",\"id\":1,\"at\":2,\"attempt\":1,\"pid\":0}",
      "{\"event\":\"pid\",\"id\":1,\"at\":2,\"attempt\":1,\"pid\":77}"},
     0,
     "running"},
    {"a pid for an attempt that is not running",
     {SUB(1), START(1, 1), "{\"event\":\"pid\",\"id\":1,\"at\":2,\"attempt\":2,\"pid\":77}"},
     1,
     "running"},
    {"an unknown event", {SUB(1), "{\"event\":\"bogus\",\"id\":1,\"at\":1}"}, 1, "queued"},
    {"an unknown stage",
     {"{\"event\":\"submit\",\"id\":1,\"at\":1,\"kind\":\"rm -rf\",\"file\":\"x\",\"ranks\":1}"},
     1,
     ""},
    {"a submit without ranks",
     {"{\"event\":\"submit\",\"id\":1,\"at\":1,\"kind\":\"train\",\"file\":\"x\",\"dir\":\"/\"}"},
     1,
     ""},
    {"a pool runs with its first replica", {POOL(1), RSTART(1, 1)}, 0, "running"},
    {"a pool's replicas start in order", {POOL(1), RSTART(1, 2)}, 1, "queued"},
    {"a stopped replica's end leaves the pool queued, no restart used",
     {POOL(1), RSTART(1, 1), RSTOP(1, 1), REXIT(1, 1, 0), RSTART(1, 2)},
     0,
     "running"},
    {"a replica failing on its own uses a restart; then the pool fails",
     {POOL(1), RSTART(1, 1), RSTART(1, 2), REXIT(1, 1, 9), REXIT(1, 2, 9)},
     0,
     "failed"},
    {"... and with restarts gone, no replica starts",
     {POOL(1), RSTART(1, 1), RSTART(1, 2), REXIT(1, 1, 9), REXIT(1, 2, 9), RSTART(1, 3)},
     1,
     "failed"},
    {"a cancelled pool ends with its last replica",
     {POOL(1), RSTART(1, 1), RSTART(1, 2), CANCEL(1), REXIT(1, 2, 0), REXIT(1, 1, 0)},
     0,
     "cancelled"},
    {"no replica starts in a cancelled pool",
     {POOL(1), RSTART(1, 1), CANCEL(1), RSTART(1, 2)},
     1,
     "running"},
    {"replica events of a job that is not a pool", {SUB(1), RSTART(1, 1)}, 1, "queued"},
    {"a pool must be a serve job",
     {"{\"event\":\"submit\",\"id\":1,\"at\":1,\"kind\":\"train\",\"file\":\"j\",\"dir\":"
      "\"/\",\"ranks\":1,\"pool_max\":2}"},
     1,
     ""},
    {"a stage waits for earlier jobs", {SUB(1), STAGE(2, "[1]", 1)}, 0, "queued queued"},
    {"a stage cannot wait for itself", {SUB(1), STAGE(2, "[2]", 1)}, 1, "queued"},
    {"a stage takes inputs from earlier jobs only", {SUB(1), STAGE(2, "[1]", 3)}, 1, "queued"},
    {"an exit without its decision",
     {SUB(1), START(1, 1), "{\"event\":\"exit\",\"id\":1,\"at\":3,\"attempt\":1,\"rc\":0}"},
     1,
     "running"},
};

static int reps_equal(const td_job *x, const td_job *y) {
    for (int k = 0; k < x->n_rep; k++)
        if (x->rep[k].seq != y->rep[k].seq || x->rep[k].pid != y->rep[k].pid ||
            x->rep[k].started_at != y->rep[k].started_at ||
            x->rep[k].stopping != y->rep[k].stopping)
            return 0;
    return 1;
}

static int job_equal(const td_job *x, const td_job *y) {
    return x->id == y->id && !strcmp(x->kind, y->kind) && !strcmp(x->file, y->file) &&
           !strcmp(x->dir, y->dir) && x->ranks == y->ranks && x->priority == y->priority &&
           x->max_restarts == y->max_restarts && x->limit_s == y->limit_s && x->state == y->state &&
           x->attempt == y->attempt && x->restarts == y->restarts &&
           x->cancel_asked == y->cancel_asked && x->preempting == y->preempting &&
           x->pid == y->pid && !strcmp(x->hosts, y->hosts) && x->submitted_at == y->submitted_at &&
           x->started_at == y->started_at && x->ended_at == y->ended_at && x->rc == y->rc &&
           !strcmp(x->reason, y->reason) && !strcmp(x->pipeline, y->pipeline) &&
           !strcmp(x->stage, y->stage) && x->n_after == y->n_after &&
           !memcmp(x->after, y->after, sizeof x->after) && x->n_inputs == y->n_inputs &&
           !memcmp(x->input_from, y->input_from, sizeof x->input_from) &&
           !memcmp(x->input_key, y->input_key, sizeof x->input_key) && x->pool_min == y->pool_min &&
           x->pool_max == y->pool_max && x->pool_want == y->pool_want && x->n_rep == y->n_rep &&
           x->rep_seq == y->rep_seq && reps_equal(x, y) && x->failing == y->failing;
}

static void states(const td_jobs *t, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; i < td_jobs_count(t); i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? " " : "",
                 td_job_state_name(td_jobs_at(t, i)->state));
    }
}

typedef struct {
    td_jobs *t;
} replay_ctx;

static td_status replay(void *ctx, const cJSON *rec, long line) {
    (void)line;
    return td_jobs_apply(((replay_ctx *)ctx)->t, rec);
}

int main(void) {
    int n = (int)(sizeof k_cases / sizeof *k_cases);
    for (int c = 0; c < n; c++) {
        const tcase *tc = &k_cases[c];
        td_jobs *t;
        REQUIRE(td_jobs_new(&t) == TD_OK, "new");
        int ne = 0;
        while (ne < 8 && tc->events[ne])
            ne++;
        for (int e = 0; e < ne; e++) {
            cJSON *ev = cJSON_Parse(tc->events[e]);
            REQUIRE(ev, "case %s: event %d is not JSON", tc->name, e);
            td_status s = td_jobs_apply(t, ev);
            int last = e == ne - 1;
            if (last && tc->refused_last)
                CHECK(s != TD_OK, "%s: the last event was accepted", tc->name);
            else
                CHECK(s == TD_OK, "%s: event %d refused: %s", tc->name, e, td_error_message());
            if (last && tc->refused_last && s != TD_OK)
                printf("%-48s refused: %s\n", tc->name, td_error_message());
            cJSON_Delete(ev);
        }
        char got[200];
        states(t, got, sizeof got);
        CHECK(!strcmp(got, tc->want), "%s: states \"%s\", want \"%s\"", tc->name, got, tc->want);
        if (!tc->refused_last) printf("%-48s %s\n", tc->name, got);
        td_jobs_free(&t);
    }

    /* ---- hosts: drain and undrain ---- */
    {
        td_jobs *t;
        REQUIRE(td_jobs_new(&t) == TD_OK, "new");
        const char *evs[] = {"{\"event\":\"drain\",\"host\":\"a\",\"at\":1}",
                             "{\"event\":\"drain\",\"host\":\"b\",\"at\":1}",
                             "{\"event\":\"drain\",\"host\":\"a\",\"at\":2}",
                             "{\"event\":\"undrain\",\"host\":\"a\",\"at\":3}"};
        for (int e = 0; e < 4; e++) {
            cJSON *ev = cJSON_Parse(evs[e]);
            CHECK(td_jobs_apply(t, ev) == TD_OK, "host event %d: %s", e, td_error_message());
            cJSON_Delete(ev);
            if (e == 2)
                CHECK(td_jobs_host_draining(t, "a") && td_jobs_host_draining(t, "b") &&
                          !td_jobs_draining_at(t, 2),
                      "a and b drain, once each");
        }
        CHECK(!td_jobs_host_draining(t, "a") && td_jobs_host_draining(t, "b") &&
                  !strcmp(td_jobs_draining_at(t, 0), "b"),
              "after undrain a: only b drains");
        cJSON *ev = cJSON_Parse("{\"event\":\"drain\",\"at\":1}");
        CHECK(td_jobs_apply(t, ev) != TD_OK, "a drain without a host is refused");
        cJSON_Delete(ev);
        printf("%-48s %s\n", "drain and undrain", "b draining");
        td_jobs_free(&t);
    }

    /* ---- a table rebuilt from its journal equals the one that wrote it ---- */
    char dir[] = "/tmp/test_jobs.XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/journal", dir);
    td_jobs *a, *b;
    td_journal *j;
    REQUIRE(td_jobs_new(&a) == TD_OK && td_jobs_new(&b) == TD_OK, "new");
    REQUIRE(td_journal_open(path, NULL, NULL, &j) == TD_OK, "%s", td_error_message());
    const char *evs[] = {SUB(1),
                         SUB(2),
                         START(1, 1),
                         SUB(3),
                         CANCEL(2),
                         EXIT(1, 1, 1, "queued"),
                         START(1, 2),
                         PREEMPT(1),
                         EXIT(1, 2, 0, "queued"),
                         START(3, 1),
                         POOL(4),
                         RSTART(4, 1),
                         RSTART(4, 2),
                         RSTOP(4, 1),
                         REXIT(4, 1, 0),
                         STAGE(5, "[3, 4]", 3)};
    for (size_t e = 0; e < sizeof evs / sizeof *evs; e++) {
        cJSON *ev = cJSON_Parse(evs[e]);
        CHECK(td_journal_append(j, ev) == TD_OK && td_jobs_apply(a, ev) == TD_OK, "event %zu: %s",
              e, td_error_message());
        cJSON_Delete(ev);
    }
    td_journal_free(&j);
    replay_ctx rc = {b};
    REQUIRE(td_journal_open(path, replay, &rc, &j) == TD_OK, "%s", td_error_message());
    CHECK(td_jobs_count(a) == 5 && td_jobs_count(b) == 5, "%d and %d jobs", td_jobs_count(a),
          td_jobs_count(b));
    CHECK(td_jobs_next_id(b) == 6, "next id %ld", td_jobs_next_id(b));
    for (int i = 0; i < td_jobs_count(a) && i < td_jobs_count(b); i++)
        CHECK(job_equal(td_jobs_at(a, i), td_jobs_at(b, i)), "job %d differs after the replay",
              i + 1);
    char got[200];
    states(b, got, sizeof got);
    CHECK(!strcmp(got, "queued cancelled running running queued"), "replayed states %s", got);
    const td_job *j1 = td_jobs_find(b, 1);
    CHECK(j1 && j1->attempt == 2 && j1->restarts == 1 && !j1->preempting,
          "job 1: attempt %d restarts %d", j1 ? j1->attempt : -1, j1 ? j1->restarts : -1);
    printf("replayed %ld events: %s\n", td_journal_count(j), got);
    td_journal_free(&j);
    td_jobs_free(&a);
    td_jobs_free(&b);
    unlink(path);
    rmdir(dir);
    printf("%d cases\n", n);
    return test_done("test_jobs");
}
