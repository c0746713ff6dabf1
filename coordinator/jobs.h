/* The coordinator's job table, built only from events (docs/coordinator.md, "Job table").
 *
 * Every change to a job is an event, a JSON object: the coordinator appends it to its journal
 * (coordinator/journal.h) and then applies it with td_jobs_apply; on start it replays the
 * journal through the same function. So the table after a restart is exactly the table
 * before it, and the rules of what may follow what live in one place.
 *
 * Events ("event" names the kind; every event has "id" and "at", seconds on the
 * coordinator's clock):
 *   submit   kind, file, dir, ranks, priority, limit_s, max_restarts: a new job, queued; ids are
 *            given in order (each submit's id is the table's next id); a pipeline's stage
 *            also has pipeline, stage, after ([ids of earlier jobs it waits for]) and
 *            inputs ({"dotted.key": id}: the key of its job file set to that job's output)
 *   start    attempt, pid, hosts: an attempt began (queued -> running); journaled before the
 *            process exists, so pid may be 0 and come with the next event:
 *   pid      attempt, pid: the running attempt's launcher
 *   exit     attempt, rc, then ("done", "failed", "queued"), reason: the attempt ended; `then`
 *            is the coordinator's decision (restart after a failure, requeue after
 *            preemption), recorded so that a replay need not decide again
 *   cancel   a cancel was asked for (reason: optional): a queued job is cancelled at once; a
 *            running one when its exit arrives
 *   preempt  the job is being stopped with a checkpoint to make room; its exit requeues it
 * A serving pool (a serve job submitted with pool_min/pool_max/pool_replicas) runs replicas,
 * each a process of its own with `ranks` ranks; it is running while it has replicas:
 *   rstart   replica (its number, counted from 1), pid (0: journaled before the fork)
 *   rpid     replica, pid
 *   rstop    replica: it is being stopped (scaled down, or its slots taken back)
 *   rexit    replica, rc, reason: the replica ended; one that failed uncalled-for uses one of
 *            max_restarts (beyond them the pool fails); the pool ends (cancelled, failed)
 *            with its last replica when that was asked for
 * Hosts: "drain" and "undrain" (host, at; no id): nothing new is placed on a draining host.
 * An event that does not fit the job's state (a start of a running job, an exit of another
 * attempt, an unknown id, a restart beyond max_restarts) or lacks a field is refused with an
 * error status and a message naming it, and changes nothing. */
#ifndef TD_JOBS_H
#define TD_JOBS_H

#include <cjson/cJSON.h>

#include "common/status.h"

typedef enum {
    TD_JOB_QUEUED,
    TD_JOB_RUNNING,
    TD_JOB_DONE,
    TD_JOB_FAILED,
    TD_JOB_CANCELLED,
} td_job_state;

#define TD_JOB_MAX_AFTER 16
#define TD_JOB_MAX_INPUTS 8
#define TD_JOB_MAX_REPLICAS 32

typedef struct {
    int seq;  /* its number in the pool, from 1 */
    long pid; /* its launcher (0 until known) */
    double started_at;
    int stopping;
} td_replica_run;

typedef struct {
    long id;
    char kind[16];   /* prep, train, finetune, distill, serve, bench */
    char file[1024]; /* the job file */
    char dir[1024];  /* the directory it runs in */
    int ranks, priority, max_restarts;
    double limit_s;
    td_job_state state;
    int attempt;  /* attempts started so far */
    int restarts; /* attempts restarted after a failure */
    int cancel_asked, preempting;
    long pid; /* running: the launcher's process */
    char hosts[256];
    double submitted_at, started_at, ended_at;
    int rc; /* the last attempt's exit code */
    char reason[200];
    char pipeline[64], stage[64]; /* a pipeline's stage; "" for a job of its own */
    int n_after;
    long after[TD_JOB_MAX_AFTER]; /* jobs that must be done before this one starts */
    int n_inputs;
    char input_key[TD_JOB_MAX_INPUTS][128];
    long input_from[TD_JOB_MAX_INPUTS]; /* the job whose output the key is set to */
    /* a serving pool: pool_max > 0 */
    int pool_min, pool_max, pool_want, pool_per_queue;
    int n_rep, rep_seq; /* replicas running; replicas started so far */
    td_replica_run rep[TD_JOB_MAX_REPLICAS];
    int failing; /* a pool whose restarts ran out: its replicas are being stopped */
} td_job;

typedef struct td_jobs td_jobs;

td_status td_jobs_new(td_jobs **out);
void td_jobs_free(td_jobs **t);

/* Applies one event (see above). */
td_status td_jobs_apply(td_jobs *t, const cJSON *ev);

/* The id the next submit must carry. */
long td_jobs_next_id(const td_jobs *t);
int td_jobs_count(const td_jobs *t);
/* The i-th job in submission order, or NULL. */
const td_job *td_jobs_at(const td_jobs *t, int i);
/* The job with this id, or NULL. */
const td_job *td_jobs_find(const td_jobs *t, long id);

/* 1 when host is draining. */
int td_jobs_host_draining(const td_jobs *t, const char *host);
/* The draining hosts: the i-th, or NULL past the last. */
const char *td_jobs_draining_at(const td_jobs *t, int i);

const char *td_job_state_name(td_job_state s);
/* 1 for done, failed, cancelled. */
int td_job_state_final(td_job_state s);

#endif
