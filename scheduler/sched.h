/* The scheduler: what to start, stop and scale, decided over a snapshot of the pool and the
 * job table (docs/scheduler.md).
 *
 * Pure functions: no processes, no clock, no I/O. The coordinator builds a td_sched_snapshot
 * (hosts with their slots, the running and queued jobs, each serving pool's replicas and the
 * length of its request queue, the time `now` on its own clock), calls td_sched_plan, and
 * carries out the actions; when a process exits it builds the next snapshot and plans again.
 *
 * The rules, in the order td_sched_plan applies them:
 *   1. Demand is ordered by priority (higher first), then submission order (`seq`): queued
 *      batch jobs (training, prep, ...) and the replicas a serving pool lacks. A pool wants
 *      clamp(max(want, ceil(queue_len / per_replica_queue)), min, max) replicas.
 *   2. Gang placement: a job starts with all its ranks or not at all, on the hosts with the
 *      most free slots first (fewest hosts), never on a draining host.
 *   3. The head of the demand starts if it fits. If it does not, it may preempt: replicas of
 *      pools above their minimum and running preemptible batch jobs, both of lower priority
 *      than the head. Pool replicas go first (they hold no training state), newest first; then
 *      batch jobs, lowest priority first, the most recently started first (least work lost).
 *      Victims are taken only if together they free enough slots; then planning stops (the
 *      freed slots are the head's when the victims have exited).
 *   4. Otherwise the head waits and gets a reservation (EASY backfill): the time its slots
 *      free up by the running batch jobs' limits (started_at + limit_s). A later demand
 *      starts now only if it fits now and cannot delay the head: it ends (limit_s) before
 *      the reservation, or it uses slots the head will not need then. Without a reservation
 *      time (a running job without a limit, or a pool in the way) nothing backfills.
 *   5. A pool with more replicas than it wants (idle) gives back the newest ones, down to
 *      its wanted count (never below min).
 */
#ifndef TD_SCHED_H
#define TD_SCHED_H

#define TD_SCHED_MAX_HOSTS 64
#define TD_SCHED_MAX_REPLICAS 32

typedef struct {
    const char *name; /* borrowed */
    int slots;        /* worker slots (ranks) the host offers */
    int draining;     /* 1: nothing new is placed on it; what runs there keeps running */
} td_sched_host;

/* Slots held per host: n[h] ranks on host h. */
typedef struct {
    int n[TD_SCHED_MAX_HOSTS];
} td_sched_place;

typedef enum { TD_SCHED_BATCH, TD_SCHED_POOL } td_sched_kind;
typedef enum { TD_SCHED_QUEUED, TD_SCHED_RUNNING } td_sched_state;

typedef struct {
    int id; /* the coordinator's job id, echoed in actions */
    td_sched_kind kind;
    int priority; /* larger runs first */
    long seq;     /* submission order: first come, first served among equal priorities */
    int ranks;    /* batch: slots it needs, all or none; pool: slots per replica */

    /* batch */
    td_sched_state state;
    double limit_s;    /* the longest it may run (backfill's estimate); 0 = unknown */
    double started_at; /* running: when it started, on the snapshot's clock */
    int preemptible;   /* it stops with a checkpoint on SIGTERM and resumes later */
    td_sched_place held;

    /* pool: replicas[0 .. replicas) run, oldest first */
    int replicas, min_replicas, max_replicas, want_replicas;
    int queue_len;         /* requests waiting for this pool's model(s) */
    int per_replica_queue; /* queued requests one replica is expected to absorb (>= 1) */
    td_sched_place replica[TD_SCHED_MAX_REPLICAS];
} td_sched_job;

typedef struct {
    const td_sched_host *hosts;
    int n_hosts;
    const td_sched_job *jobs;
    int n_jobs;
    double now; /* seconds, the clock of started_at */
} td_sched_snapshot;

typedef enum {
    TD_SCHED_START,      /* start batch job `job` on `place` */
    TD_SCHED_SCALE_UP,   /* start one more replica of pool `job` on `place` */
    TD_SCHED_SCALE_DOWN, /* stop replica `replica` of pool `job` */
    TD_SCHED_PREEMPT,    /* stop batch job `job` with a checkpoint; it is queued again */
} td_sched_verb;

typedef struct {
    td_sched_verb verb;
    int job;
    int replica;          /* SCALE_DOWN */
    int for_job;          /* PREEMPT, SCALE_DOWN: the job the slots are freed for (-1: idle pool) */
    int backfilled;       /* START, SCALE_UP: started ahead of a waiting higher demand */
    td_sched_place place; /* START, SCALE_UP */
} td_sched_action;

/* Plans the actions for snapshot s into acts[0 .. max); returns how many (at most max).
 * A snapshot that does not add up (a job holding more than its host has, a pool replica
 * index out of range) is planned as given: the caller builds snapshots from its own table. */
int td_sched_plan(const td_sched_snapshot *s, td_sched_action *acts, int max);

/* The replicas pool p wants now (rule 1). */
int td_sched_pool_wants(const td_sched_job *p);

/* Gang placement of `ranks` on the free slots free[0 .. n_hosts): fills `place` and returns
 * 1, or returns 0 (and leaves place zeroed) when the free slots do not hold them all. */
int td_sched_place_gang(const int *free, int n_hosts, int ranks, td_sched_place *place);

const char *td_sched_verb_name(td_sched_verb v);

#endif
