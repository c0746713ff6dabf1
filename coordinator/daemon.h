/* The coordinator daemon (docs/coordinator.md): the job table (rebuilt from its journal),
 * the pool's slots, the scheduler, the launcher, and the control socket that `tandem submit`,
 * `ps` and `cancel` talk to.
 *
 * One loop on one thread (redis's ae style): poll the control socket (100 ms), reap the
 * launchers that exited, escalate cancels that were not obeyed, plan with the scheduler and
 * launch. Every change to a job is journaled (fsync'd) before it is acted on.
 *
 * A job runs as `mpirun -np RANKS --hostfile STATE/jobs/ID/hostfile tandem KIND FILE` in the
 * job's directory, under a shell started with setsid (its pid is the sid of every process of
 * the job, so that a cancel reaches
 * every rank) and writes mpirun's exit code to STATE/jobs/ID/exit.ATTEMPT; its output goes to
 * STATE/jobs/ID/log; a restarted attempt adds --resume when a checkpoint exists. Jobs outlive
 * the daemon: a daemon started again on the same state directory finds the running ones by
 * their pid, watches them until they end, and reads how from the exit file. */
#ifndef TD_DAEMON_H
#define TD_DAEMON_H

#include "common/status.h"

typedef struct {
    const char *state_dir; /* journal, hostfiles, logs */
    const char *control;   /* ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:5580 */
    int slots;             /* worker slots of this machine */
    const char *tandem;    /* the tandem binary the jobs run */
    int insecure;          /* no CURVE on the control socket */
    double cancel_grace_s; /* SIGTERM, then SIGKILL after this long */
    const char *replicas;  /* the hosted router's back end, where serve jobs register */
    const char *http;      /* HOST:PORT of the hosted gateway, or NULL for none */
    int slurm;             /* launch jobs with srun (a Slurm job each, tandem-SID) instead
                            * of mpirun; stop and cancel with scancel */
} td_daemon_opts;

/* Runs until SIGINT or SIGTERM (then returns TD_OK; running jobs keep running). */
td_status td_daemon_run(const td_daemon_opts *o);

#endif
