/* The coordinator daemon (see daemon.h). */
#include "coordinator/daemon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/fsutil.h"
#include "common/grow.h"
#include "common/json.h"
#include "common/log.h"
#include "coordinator/control.h"
#include "coordinator/gateway.h"
#include "coordinator/jobs.h"
#include "coordinator/journal.h"
#include "coordinator/router.h"
#include "coordinator/stages.h"
#include "proto/keys.h"
#include "proto/wire.h"
#include "scheduler/sched.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

#define QUEUE_WINDOW 30

typedef struct {
    double kill_at;   /* a cancel's SIGKILL deadline (0: none) */
    int child;        /* launched by this daemon (waitpid reaps it); else watched by its pid */
    int models_read;  /* serve: models below read from its run file */
    char models[512]; /* serve: the model names it answers to, comma-separated */
    /* a pool: its queue length at each of the router's last QUEUE_WINDOW status replies
     * (one a second); the scheduler sees their maximum, so a pool grows at once under a
     * burst and shrinks only after QUEUE_WINDOW quiet seconds */
    int qhist[QUEUE_WINDOW], qpos;
    double qseen;
} job_rt;

#define FRONT "inproc://tandem-coordinator-front"
/* a serve replica finishes its running requests for up to this long after SIGTERM (serve's
 * --drain default): its SIGKILL comes this much later than a training job's */
#define SERVE_DRAIN_S 10
#define MAX_MODELS 64

/* The hosted router's view of the models (its status, asked for every second). */
typedef struct {
    char name[128];
    int up, queue;
} model_seen;

typedef struct {
    td_daemon_opts o;
    td_journal *journal;
    td_jobs *jobs;
    job_rt *rt; /* by job id */
    size_t rt_cap;
    void *zctx, *sock;
    td_zap *zap;
    /* the serving plane: the router (a thread of its own), the gateway, a status socket */
    td_router *router;
    pthread_t router_th;
    int router_running;
    volatile int router_stop;
    td_gateway *gateway;
    void *status_sock;
    double status_asked_at;
    int n_models;
    model_seen models[MAX_MODELS];
    double status_at;  /* when the latest status reply came */
    double started_at; /* when this daemon started */
} coord;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static job_rt *rt_of(coord *d, long id) {
    size_t had = d->rt_cap;
    if (TD_GROW(d->rt, d->rt_cap, (size_t)id + 1) != TD_OK) return NULL;
    if (d->rt_cap > had) memset(d->rt + had, 0, (d->rt_cap - had) * sizeof *d->rt);
    return &d->rt[id];
}

/* An event: applied to the table (which refuses one that does not fit), then journaled
 * (fsync'd); only then is it acted on. A journal that cannot be written stops the daemon. */
static td_status record(coord *d, cJSON *ev) {
    td_status s = td_jobs_apply(d->jobs, ev);
    if (s == TD_OK) {
        s = td_journal_append(d->journal, ev);
        if (s != TD_OK) g_stop = 1; /* the table is ahead of its journal: stop acting */
    }
    cJSON_Delete(ev);
    return s;
}

static cJSON *event(const char *kind, long id) {
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "event", kind);
    cJSON_AddNumberToObject(ev, "id", (double)id);
    cJSON_AddNumberToObject(ev, "at", now_s());
    return ev;
}

/* ---------------------------------------------------------------------------------------- */
/* launching */

static td_status ended(coord *d, const td_job *j, int rc, const char *how);

/* The largest job file the coordinator takes. */
#define JOB_FILE_MAX (1u << 20)

/* Where the copy of job id's file, taken when it was submitted, is kept: the job runs what
 * was submitted, whatever becomes of the file afterwards. */
static void submitted_path(const coord *d, long id, char *out, size_t n) {
    snprintf(out, n, "%s/jobs/%ld/submitted.json", d->o.state_dir, id);
}

/* Copies a job file into the state directory as job id's submitted file. */
static td_status keep_submitted(coord *d, long id, const char *file) {
    char *text = NULL, dir[1200], p[1300];
    size_t len = 0;
    TD_TRY(td_fs_read_file(file, &text, &len));
    td_status s = TD_OK;
    if (len > JOB_FILE_MAX)
        s = td_error_set(TD_ERR_INVALID, "%s: %zu bytes; a job file is at most %u", file, len,
                         JOB_FILE_MAX);
    snprintf(dir, sizeof dir, "%s/jobs/%ld", d->o.state_dir, id);
    if (s == TD_OK) s = td_fs_mkdirs(dir);
    submitted_path(d, id, p, sizeof p);
    if (s == TD_OK) s = td_fs_write_file_atomic(p, text, len);
    free(text);
    return s;
}

/* Job j's file as submitted (its copy; the file itself for a job journaled before copies
 * were kept). */
static td_status load_submitted(const coord *d, const td_job *j, cJSON **doc) {
    char p[1300];
    submitted_path(d, j->id, p, sizeof p);
    return td_json_load_file(access(p, R_OK) == 0 ? p : j->file, doc);
}

/* The effective job file of j: its own with each input set to the output of the job it
 * names (which is done), written to STATE/jobs/ID/job.json, the file the job runs. *doc is
 * the caller's. */
static td_status run_file(coord *d, const td_job *j, char *path, size_t n, cJSON **doc) {
    *doc = NULL;
    TD_TRY(load_submitted(d, j, doc));
    for (int i = 0; i < j->n_inputs; i++) {
        const td_job *up = td_jobs_find(d->jobs, j->input_from[i]);
        cJSON *updoc = NULL;
        char out[2048];
        td_status s = up ? load_submitted(d, up, &updoc)
                         : td_error_set(TD_ERR_INVALID, "no job %ld", j->input_from[i]);
        if (s == TD_OK) {
            /* the upstream's own inputs change its output only through its checkpoint or
             * out directory, which inputs do not set: its own file names them */
            s = td_stage_output(up->kind, updoc, up->dir, out, sizeof out);
        }
        cJSON_Delete(updoc);
        if (s == TD_OK) s = td_stage_set(*doc, j->input_key[i], out);
        if (s != TD_OK) {
            cJSON_Delete(*doc);
            *doc = NULL;
            char why[600]; /* the message is the error buffer's own: copy it first */
            snprintf(why, sizeof why, "%s", td_error_message());
            return td_error_set(TD_ERR_INVALID, "input %s (from job %ld): %s", j->input_key[i],
                                j->input_from[i], why);
        }
    }
    snprintf(path, n, "%s/jobs/%ld/job.json", d->o.state_dir, j->id);
    td_status s = td_json_save_file(path, *doc);
    if (s != TD_OK) {
        cJSON_Delete(*doc);
        *doc = NULL;
    }
    return s;
}

/* An attempt that could not begin (its inputs, its directory): journaled as a start and an
 * exit that fails the job, with the reason; restarts would not help. */
static td_status cannot_start(coord *d, const td_job *j, const char *why) {
    long id = j->id;
    int attempt = j->attempt + 1;
    cJSON *ev = event("start", id);
    cJSON_AddNumberToObject(ev, "attempt", attempt);
    cJSON_AddNumberToObject(ev, "pid", 0);
    TD_TRY(record(d, ev));
    ev = event("exit", id);
    cJSON_AddNumberToObject(ev, "attempt", attempt);
    cJSON_AddNumberToObject(ev, "rc", 127);
    cJSON_AddStringToObject(ev, "then", "failed");
    char how[200];
    snprintf(how, sizeof how, "could not start: %.170s%s", why, strlen(why) > 170 ? "..." : "");
    cJSON_AddStringToObject(ev, "reason", how);
    TD_TRY(record(d, ev));
    TD_LOG_ERROR("job %ld: %s", id, how);
    return TD_OK;
}

/* What a start needs, made before it is journaled: the hostfile, the run file, the command
 * line (args) and the job's log (an open descriptor). Returns TD_OK, or TD_ERR_INVALID with
 * the reason when the job cannot start at all (its inputs, its file), or another error. */
typedef struct {
    char hf[1300], logp[1300], runp[1300];
    td_argv args;
    int logfd;
    int resume;
} prepared;

static td_status prepare(coord *d, const td_job *j, int slots, prepared *p) {
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/jobs/%ld", d->o.state_dir, j->id);
    TD_TRY(td_fs_mkdirs(dir));
    snprintf(p->hf, sizeof p->hf, "%s/hostfile", dir);
    snprintf(p->logp, sizeof p->logp, "%s/log", dir);
    char hosts[64];
    snprintf(hosts, sizeof hosts, "localhost slots=%d\n", slots);
    TD_TRY(td_fs_write_file_atomic(p->hf, hosts, strlen(hosts)));
    cJSON *doc = NULL;
    TD_TRY(run_file(d, j, p->runp, sizeof p->runp, &doc));
    /* a restart resumes the checkpoint the job has written */
    char ck[2048];
    p->resume = j->attempt > 0 && (!strcmp(j->kind, "train") || !strcmp(j->kind, "finetune")) &&
                td_stage_output(j->kind, doc, j->dir, ck, sizeof ck) == TD_OK;
    td_error_clear();
    td_stage_env env = {td_router_back_endpoint(d->router), d->o.insecure, p->resume};
    td_status s = td_stage_argv(j->kind, p->runp, doc, &env, &p->args);
    cJSON_Delete(doc);
    TD_TRY(s);
    p->logfd = open(p->logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (p->logfd < 0) {
        td_argv_free(&p->args);
        return td_error_set(TD_ERR_IO, "cannot open %s: %s", p->logp, strerror(errno));
    }
    return TD_OK;
}

/* Forks the job's launcher: a shell (setsid: its pid is the sid of all the job's processes)
 * that writes its pid to EXITF.pid, runs mpirun, and records mpirun's exit code in EXITF, so
 * that a coordinator started again after this one died still learns how the job ended. The
 * shell outlives a SIGTERM to the job (a handler, which exec resets in mpirun: an ignored
 * signal would stay ignored) until mpirun and its ranks are gone, so the job ends when its
 * last process does. Returns the pid, or -1 (errno) when fork fails. Frees p. */
static pid_t spawn(coord *d, const td_job *j, prepared *p, int ranks, const char *exitf,
                   const char *head) {
    char np[16];
    snprintf(np, sizeof np, "%d", ranks);
    unlink(exitf);
    const char **argv = calloc((size_t)p->args.n + 16, sizeof *argv);
    if (!argv) {
        close(p->logfd);
        td_argv_free(&p->args);
        errno = ENOMEM;
        return -1;
    }
    int k = 0;
    argv[k++] = "/bin/sh";
    argv[k++] = "-c";
    argv[k++] = "echo $$ > \"$0.pid\"; trap : TERM INT; \"$@\"; rc=$?; echo $rc > "
                "\"$0.tmp\" && mv \"$0.tmp\" \"$0\"; exit $rc";
    argv[k++] = exitf;
    if (d->o.slurm) { /* a Slurm job of `ranks` tasks, wired up by PMIx */
        argv[k++] = "srun";
        argv[k++] = "--mpi=pmix";
        argv[k++] = "--kill-on-bad-exit=1";
        argv[k++] = "-n";
        argv[k++] = np;
    } else {
        argv[k++] = "mpirun";
        argv[k++] = "-np";
        argv[k++] = np;
        argv[k++] = "--hostfile";
        argv[k++] = p->hf;
    }
    argv[k++] = d->o.tandem;
    for (int i = 0; i < p->args.n; i++)
        argv[k++] = p->args.v[i];
    argv[k] = NULL;
    if (d->o.slurm)
        dprintf(p->logfd, "== %s: srun --mpi=pmix -n %s (Slurm job tandem-SID) %s", head, np,
                d->o.tandem);
    else
        dprintf(p->logfd, "== %s: mpirun -np %s --hostfile %s %s", head, np, p->hf, d->o.tandem);
    for (int i = 0; i < p->args.n; i++)
        dprintf(p->logfd, " %s", p->args.v[i]);
    dprintf(p->logfd, " (in %s)\n", j->dir);
    unlink(exitf);
    char pidf[1400];
    snprintf(pidf, sizeof pidf, "%s.pid", exitf);
    unlink(pidf);
    pid_t pid = fork();
    if (pid == 0) {
        setsid(); /* sid = this pid, inherited by mpirun and the ranks: a cancel finds them */
        if (d->o.slurm) { /* srun reads its job name from the environment */
            char name[64];
            snprintf(name, sizeof name, "tandem-%ld", (long)getpid());
            setenv("SLURM_JOB_NAME", name, 1);
        }
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        if (chdir(j->dir) != 0) {
            dprintf(p->logfd, "cannot enter %s: %s\n", j->dir, strerror(errno));
            _exit(127);
        }
        dup2(p->logfd, 1);
        dup2(p->logfd, 2);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "cannot run %s: %s\n", d->o.slurm ? "srun" : "mpirun", strerror(errno));
        _exit(127);
    }
    int e = errno;
    close(p->logfd);
    td_argv_free(&p->args);
    free(argv);
    errno = e;
    return pid;
}

static td_status launch(coord *d, const td_job *j, const td_sched_place *pl) {
    prepared p;
    td_status s = prepare(d, j, pl->n[0], &p);
    if (s == TD_ERR_INVALID || s == TD_ERR_NOTFOUND || s == TD_ERR_FORMAT) {
        char why[600];
        snprintf(why, sizeof why, "%s", td_error_message());
        td_error_clear();
        return cannot_start(d, j, why);
    }
    TD_TRY(s);
    /* journaled before the fork: a coordinator killed in between finds a start without a
     * pid, and the pid file the shell writes first */
    long id = j->id;
    int attempt = j->attempt + 1, resume = p.resume;
    cJSON *ev = event("start", id);
    cJSON_AddNumberToObject(ev, "attempt", attempt);
    cJSON_AddNumberToObject(ev, "pid", 0);
    char where[32];
    snprintf(where, sizeof where, "localhost:%d", pl->n[0]);
    cJSON_AddStringToObject(ev, "hosts", where);
    s = record(d, ev);
    if (s != TD_OK) {
        close(p.logfd);
        td_argv_free(&p.args);
        return s;
    }
    job_rt *rt = rt_of(d, id);
    if (rt) rt->child = 1, rt->kill_at = 0, rt->models_read = 0;
    char exitf[1300], head[32];
    snprintf(exitf, sizeof exitf, "%s/jobs/%ld/exit.%d", d->o.state_dir, id, attempt);
    snprintf(head, sizeof head, "attempt %d", attempt);
    pid_t pid = spawn(d, j, &p, j->ranks, exitf, head);
    if (pid < 0) {
        char how[96];
        snprintf(how, sizeof how, "could not start: fork: %s", strerror(errno));
        return ended(d, td_jobs_find(d->jobs, id), 127, how);
    }
    ev = event("pid", id);
    cJSON_AddNumberToObject(ev, "attempt", attempt);
    cJSON_AddNumberToObject(ev, "pid", pid);
    s = record(d, ev);
    if (s != TD_OK) {
        kill(-pid, SIGKILL);
        return s;
    }
    TD_LOG_INFO("job %ld: attempt %d started (%s, %d ranks, pid %d)%s", id, attempt,
                td_jobs_find(d->jobs, id)->kind, td_jobs_find(d->jobs, id)->ranks, (int)pid,
                resume ? ", resuming its checkpoint" : "");
    return TD_OK;
}

/* One more replica of a serving pool (exit file exit.rSEQ). */
static td_status launch_replica(coord *d, const td_job *j, const td_sched_place *pl) {
    prepared p;
    td_status s = prepare(d, j, pl->n[0], &p);
    if (s != TD_OK) return s; /* the pool stays as it is; the next round tries again */
    long id = j->id;
    int seq = j->rep_seq + 1;
    cJSON *ev = event("rstart", id);
    cJSON_AddNumberToObject(ev, "replica", seq);
    cJSON_AddNumberToObject(ev, "pid", 0);
    s = record(d, ev);
    if (s != TD_OK) {
        close(p.logfd);
        td_argv_free(&p.args);
        return s;
    }
    j = td_jobs_find(d->jobs, id);
    job_rt *rt = rt_of(d, id);
    if (rt) rt->models_read = 0;
    char exitf[1300], head[32];
    snprintf(exitf, sizeof exitf, "%s/jobs/%ld/exit.r%d", d->o.state_dir, id, seq);
    snprintf(head, sizeof head, "replica %d", seq);
    pid_t pid = spawn(d, j, &p, j->ranks, exitf, head);
    ev = event(pid < 0 ? "rexit" : "rpid", id);
    cJSON_AddNumberToObject(ev, "replica", seq);
    if (pid < 0) {
        cJSON_AddNumberToObject(ev, "rc", 127);
        cJSON_AddStringToObject(ev, "reason", "could not start: fork failed");
    } else {
        cJSON_AddNumberToObject(ev, "pid", pid);
    }
    s = record(d, ev);
    if (s != TD_OK && pid > 0) kill(-pid, SIGKILL);
    if (s == TD_OK && pid > 0)
        TD_LOG_INFO("job %ld: replica %d started (%d ranks, pid %d)", id, seq, j->ranks, (int)pid);
    return s;
}

/* From /proc/PID/stat ("pid (comm) state ppid pgrp sid ...", comm may hold spaces and
 * parentheses): the state letter, the sid and the command name; 0 when it cannot be read. */
static int proc_stat(long pid, char *state, long *sid, char *comm, size_t cn) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%ld/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = 0;
    char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
    long ppid, pgrp;
    if (!lp || !rp || sscanf(rp + 1, " %c %ld %ld %ld", state, &ppid, &pgrp, sid) != 4) return 0;
    *rp = 0;
    snprintf(comm, cn, "%s", lp + 1);
    return 1;
}

/* Sends sig to every process whose sid is `sid` (the job's shell: mpirun and the ranks
 * inherit it, each rank in a process group of its own). With ranks_only, only the tandem
 * processes -- the ranks -- get it: they stop at the end of their step with a checkpoint,
 * and mpirun, not signalled, then exits on its own instead of killing them after its own
 * short grace. Returns how many processes were signalled. */
static int signal_job(long sid, int sig, int ranks_only) {
    if (sid <= 0) return 0;
    DIR *dp = opendir("/proc");
    int n = 0;
    for (struct dirent *e; dp && (e = readdir(dp));) {
        char *end = NULL, state, comm[64];
        long pid = strtol(e->d_name, &end, 10), psid;
        if (pid <= 0 || *end || !proc_stat(pid, &state, &psid, comm, sizeof comm)) continue;
        if (psid != sid || state == 'Z' || (ranks_only && strcmp(comm, "tandem"))) continue;
        if (kill((pid_t)pid, sig) == 0) n++;
    }
    if (dp) closedir(dp);
    return n;
}

/* The Slurm launcher (--launcher slurm): each job runs as `srun` under the Slurm job name
 * tandem-SID (SID: its shell's pid, the sid its own processes share); its ranks are
 * Slurm's tasks, outside that process group of ours, so they are signalled through
 * scancel. */
static int g_slurm;

static void scancel(long sid, const char *signame) {
    char name[64], sig[32];
    snprintf(name, sizeof name, "--name=tandem-%ld", sid);
    snprintf(sig, sizeof sig, "--signal=%s", signame ? signame : "KILL");
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 1);
            dup2(nul, 2);
        }
        if (signame)
            execlp("scancel", "scancel", "--full", sig, name, (char *)NULL);
        else
            execlp("scancel", "scancel", name, (char *)NULL);
        _exit(127);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

/* Asks the job whose shell is `sid` to stop: SIGTERM to its ranks (training checkpoints,
 * serving drains), or to all its processes while it has no rank yet. */
static void stop_gently(long sid) {
    if (sid > 0 && g_slurm) {
        scancel(sid, "TERM");
        return;
    }
    if (sid > 0 && signal_job(sid, SIGTERM, 1) == 0) signal_job(sid, SIGTERM, 0);
}

/* Ends the job whose shell is `sid` now (its grace is over). */
static void kill_job(long sid) {
    if (sid > 0 && g_slurm) scancel(sid, NULL);
    signal_job(sid, SIGKILL, 0);
}

/* 1 while process pid runs. A zombie counts as ended: the launcher of a job whose
 * coordinator died is reparented, and its new parent may not reap it at once. */
static int alive(long pid) {
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) return 0;
    char state, comm[64];
    long sid;
    if (!proc_stat(pid, &state, &sid, comm, sizeof comm)) return 1; /* no /proc: trust kill */
    return state != 'Z' && state != 'X';
}

/* The number a job's shell wrote to STATE/jobs/ID/exit.TAG (its exit code) or, with suffix
 * ".pid", exit.TAG.pid (its pid), where TAG is the attempt (a batch job) or rSEQ (a pool's
 * replica); -1 when there is none. */
static long shell_number(const coord *d, long id, const char *tag, const char *suffix) {
    char p[1300], *text = NULL;
    size_t len = 0;
    snprintf(p, sizeof p, "%s/jobs/%ld/exit.%s%s", d->o.state_dir, id, tag, suffix);
    long v = -1;
    if (td_fs_read_file(p, &text, &len) == TD_OK) {
        char *end = NULL;
        v = strtol(text, &end, 10);
        if (end == text || v < 0) v = -1;
    } else {
        td_error_clear();
    }
    free(text);
    return v;
}

static long job_file_number(const coord *d, const td_job *j, const char *suffix) {
    char tag[16];
    snprintf(tag, sizeof tag, "%d", j->attempt);
    return shell_number(d, j->id, tag, suffix);
}

/* What follows an attempt's end, decided once and journaled. */
static td_status ended(coord *d, const td_job *j, int rc, const char *how) {
    const char *then;
    if (j->cancel_asked)
        then = "cancelled";
    else if (j->preempting)
        then = "queued";
    else if (rc == 0)
        then = "done";
    else if (j->restarts < j->max_restarts)
        then = "queued";
    else
        then = "failed";
    cJSON *ev = event("exit", j->id);
    cJSON_AddNumberToObject(ev, "attempt", j->attempt);
    cJSON_AddNumberToObject(ev, "rc", rc);
    cJSON_AddStringToObject(ev, "then", then);
    cJSON_AddStringToObject(ev, "reason", how);
    long id = j->id;
    int attempt = j->attempt;
    TD_TRY(record(d, ev));
    TD_LOG_INFO("job %ld: attempt %d ended (%s) -> %s", id, attempt, how, then);
    job_rt *rt = rt_of(d, id);
    if (rt) rt->child = 0, rt->kill_at = 0;
    return TD_OK;
}

static long replica_file_number(const coord *d, long id, int seq, const char *suffix) {
    char tag[16];
    snprintf(tag, sizeof tag, "r%d", seq);
    return shell_number(d, id, tag, suffix);
}

static void replica_ended(coord *d, long id, int seq, int rc, const char *how) {
    cJSON *ev = event("rexit", id);
    cJSON_AddNumberToObject(ev, "replica", seq);
    cJSON_AddNumberToObject(ev, "rc", rc);
    cJSON_AddStringToObject(ev, "reason", how);
    if (record(d, ev) != TD_OK) {
        TD_LOG_ERROR("%s", td_error_message());
        return;
    }
    const td_job *j = td_jobs_find(d->jobs, id);
    TD_LOG_INFO("job %ld: replica %d ended (%s); the pool has %d, %s", id, seq, how, j->n_rep,
                td_job_state_name(j->state));
}

/* Stops replica seq of pool j (SIGTERM to its ranks: they drain their requests), unless it
 * is stopping already; its SIGKILL comes after the serve grace. */
static void stop_replica(coord *d, const td_job *j, int seq, const char *why) {
    const td_replica_run *r = NULL;
    for (int i = 0; i < j->n_rep; i++)
        if (j->rep[i].seq == seq) r = &j->rep[i];
    if (!r || r->stopping) return;
    long id = j->id, pid = r->pid;
    cJSON *ev = event("rstop", id);
    cJSON_AddNumberToObject(ev, "replica", seq);
    if (record(d, ev) != TD_OK) {
        TD_LOG_ERROR("%s", td_error_message());
        return;
    }
    stop_gently(pid);
    job_rt *rt = rt_of(d, id);
    if (rt) rt->kill_at = now_s() + d->o.cancel_grace_s + SERVE_DRAIN_S;
    TD_LOG_INFO("job %ld: stopping replica %d (%s)", id, seq, why);
}

/* The pools' replicas: their ends (reaped or seen by pid), pid files of replicas started by
 * a coordinator that died before it journaled them, the SIGKILL after a stop's grace. */
static void watch_pools(coord *d, pid_t reaped, int st) {
    double now = now_s();
    for (int i = 0; i < td_jobs_count(d->jobs); i++) {
        const td_job *j = td_jobs_at(d->jobs, i);
        if (j->pool_max <= 0 || j->state != TD_JOB_RUNNING) continue;
        for (int k = j->n_rep - 1; k >= 0; k--) {
            const td_replica_run *r = &j->rep[k];
            long id = j->id;
            int seq = r->seq;
            char how[160];
            if (reaped > 0 && r->pid == reaped) {
                int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                if (WIFEXITED(st))
                    snprintf(how, sizeof how, "exit code %d", rc);
                else
                    snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(st));
                replica_ended(d, id, seq, rc, how);
                return;
            }
            if (reaped > 0) continue;
            if (r->pid <= 0) {
                long pid = replica_file_number(d, id, seq, ".pid");
                if (pid > 0) {
                    cJSON *ev = event("rpid", id);
                    cJSON_AddNumberToObject(ev, "replica", seq);
                    cJSON_AddNumberToObject(ev, "pid", (double)pid);
                    if (record(d, ev) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
                } else if (now - r->started_at > 10) {
                    replica_ended(d, id, seq, -1, "never ran: its coordinator died starting it");
                }
                return; /* the table changed: look again next round */
            }
            if (!alive(r->pid)) {
                int rc = (int)replica_file_number(d, id, seq, "");
                snprintf(how, sizeof how, rc >= 0 ? "exit code %d" : "killed (no exit code)", rc);
                replica_ended(d, id, seq, rc, how);
                return;
            }
        }
        if (reaped > 0) continue;
        job_rt *rt = rt_of(d, j->id);
        if (rt && rt->kill_at > 0 && now >= rt->kill_at) {
            for (int k = 0; k < j->n_rep; k++)
                if (j->rep[k].stopping || j->cancel_asked || j->failing) {
                    TD_LOG_WARN("job %ld: replica %d still running after its grace: SIGKILL", j->id,
                                j->rep[k].seq);
                    kill_job(j->rep[k].pid);
                }
            rt->kill_at = 0;
        }
        if (j->failing) /* its restarts ran out: the others go too */
            for (int k = 0; k < j->n_rep; k++)
                if (!j->rep[k].stopping) {
                    stop_replica(d, j, j->rep[k].seq, "the pool failed");
                    return;
                }
    }
}

/* Reaps launchers that exited; watches jobs of an earlier daemon by their pid; sends SIGKILL
 * where a cancel's grace has run out. */
static void watch(coord *d) {
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0) break;
        watch_pools(d, p, st);
        for (int i = 0; i < td_jobs_count(d->jobs); i++) {
            const td_job *j = td_jobs_at(d->jobs, i);
            if (j->state != TD_JOB_RUNNING || j->pid != p) continue;
            char how[64];
            int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            if (WIFEXITED(st))
                snprintf(how, sizeof how, "exit code %d", rc);
            else
                snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(st));
            if (ended(d, j, rc, how) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
            break;
        }
    }
    watch_pools(d, 0, 0);
    double now = now_s();
    for (int i = 0; i < td_jobs_count(d->jobs); i++) {
        const td_job *j = td_jobs_at(d->jobs, i);
        if (j->state != TD_JOB_RUNNING || j->pool_max > 0) continue;
        job_rt *rt = rt_of(d, j->id);
        if (!rt) continue;
        if (!rt->child && j->pid <= 0) {
            /* started by a coordinator that died before it journaled the pid: the shell
             * wrote it first thing; no pid file long after the start: it never ran */
            long pid = job_file_number(d, j, ".pid");
            if (pid > 0) {
                cJSON *ev = event("pid", j->id);
                cJSON_AddNumberToObject(ev, "attempt", j->attempt);
                cJSON_AddNumberToObject(ev, "pid", (double)pid);
                if (record(d, ev) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
            } else if (now - j->started_at > 10) {
                /* queued again without spending a restart: it did not fail, it never ran */
                if (record(d, event("preempt", j->id)) != TD_OK ||
                    ended(d, td_jobs_find(d->jobs, j->id), -1,
                          "never ran: its coordinator died while starting it") != TD_OK)
                    TD_LOG_ERROR("%s", td_error_message());
            }
            continue;
        }
        if (!rt->child && !alive(j->pid)) {
            /* a job of an earlier coordinator ended: its shell left the exit code, unless
             * it was killed */
            int rc = (int)job_file_number(d, j, "");
            char how[160];
            if (rc >= 0)
                snprintf(how, sizeof how,
                         "exit code %d (read from its launcher's file: an earlier coordinator "
                         "started it)",
                         rc);
            else
                snprintf(how, sizeof how,
                         "killed (no exit code recorded; an earlier coordinator started it)");
            if (ended(d, j, rc, how) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
            continue;
        }
        if (rt->kill_at > 0 && now >= rt->kill_at && j->pid > 0) {
            TD_LOG_WARN("job %ld: still running %.0f s after SIGTERM: SIGKILL", j->id,
                        d->o.cancel_grace_s);
            kill_job(j->pid);
            rt->kill_at = 0;
        }
    }
}

/* A queued job's stages before it: 1 when all are done; 0 while one is still to come; -1
 * (with why) when one ended otherwise, so that this one never can start. */
static int after_ready(const coord *d, const td_job *j, char *why, size_t n) {
    int ready = 1;
    for (int i = 0; i < j->n_after; i++) {
        const td_job *up = td_jobs_find(d->jobs, j->after[i]);
        if (!up) continue;
        if (up->state == TD_JOB_FAILED || up->state == TD_JOB_CANCELLED) {
            snprintf(why, n, "%s %s (job %ld) %s", up->stage[0] ? "stage" : "job",
                     up->stage[0] ? up->stage : up->kind, up->id, td_job_state_name(up->state));
            return -1;
        }
        if (up->state != TD_JOB_DONE) ready = 0;
    }
    return ready;
}

static const char *serve_models(coord *d, const td_job *j);

/* Requests waiting at the router for a pool's models: the most of the last QUEUE_WINDOW
 * status replies. */
static int pool_queue(coord *d, const td_job *j) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", serve_models(d, j));
    int q = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        for (int i = 0; i < d->n_models; i++)
            if (!strcmp(d->models[i].name, t)) q += d->models[i].queue;
    job_rt *rt = rt_of(d, j->id);
    if (!rt) return q;
    if (rt->qseen != d->status_at) { /* a new reply: one more sample */
        rt->qhist[rt->qpos++ % QUEUE_WINDOW] = q;
        rt->qseen = d->status_at;
    }
    int most = q;
    for (int k = 0; k < QUEUE_WINDOW; k++)
        most = rt->qhist[k] > most ? rt->qhist[k] : most;
    return most;
}

/* How long a job waits before its n-th restart after a failure. */
static double backoff_s(int n) {
    return n >= 7 ? 60 : (double)(1 << (n - 1));
}

/* One scheduling round: a snapshot of this machine's slots and the table, and the starts. */
static void schedule(coord *d) {
    int n = td_jobs_count(d->jobs);
    td_sched_job *sj = calloc((size_t)n + 1, sizeof *sj);
    int(*pool_seq)[TD_SCHED_MAX_REPLICAS] = calloc((size_t)n + 1, sizeof *pool_seq);
    if (!sj || !pool_seq) {
        free(sj);
        free(pool_seq);
        return;
    }
    int ns = 0, held = 0; /* held: slots of jobs being cancelled, outside the plan */
    for (int i = 0; i < n; i++) {
        const td_job *j = td_jobs_at(d->jobs, i);
        if (j->state != TD_JOB_QUEUED && j->state != TD_JOB_RUNNING) continue;
        if (j->state == TD_JOB_QUEUED) {
            char why[150];
            int r = after_ready(d, j, why, sizeof why);
            if (r < 0) { /* what it waited for will never come */
                long id = j->id;
                cJSON *ev = event("cancel", id);
                char reason[180];
                snprintf(reason, sizeof reason, "never started: %.150s", why);
                cJSON_AddStringToObject(ev, "reason", reason);
                if (record(d, ev) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
                TD_LOG_INFO("job %ld: %s", id, reason);
                continue;
            }
            if (r == 0) continue; /* waits for the stages before it */
            /* a coordinator started again with fewer slots: what no longer fits never will */
            int need = j->pool_max > 0 ? j->pool_min * j->ranks : j->ranks;
            if (need > d->o.slots) {
                long id = j->id;
                cJSON *ev = event("cancel", id);
                char reason[180];
                snprintf(reason, sizeof reason, "never started: it needs %d slots; the pool has %d",
                         need, d->o.slots);
                cJSON_AddStringToObject(ev, "reason", reason);
                if (record(d, ev) != TD_OK) TD_LOG_ERROR("%s", td_error_message());
                TD_LOG_WARN("job %ld: %s", id, reason);
                continue;
            }
            /* back-off after a failure: 1, 2, 4 ... up to 60 s before the restart */
            if (j->restarts > 0 && j->rc != 0 && now_s() < j->ended_at + backoff_s(j->restarts))
                continue;
        }
        if (j->cancel_asked || j->failing) { /* on its way out: it holds what it holds */
            if (j->state == TD_JOB_RUNNING)
                held += j->pool_max > 0 ? j->n_rep * j->ranks : j->ranks;
            continue;
        }
        td_sched_job *s = &sj[ns++];
        s->id = (int)j->id;
        s->priority = j->priority;
        s->seq = j->id;
        s->ranks = j->ranks;
        if (j->pool_max > 0) {
            s->kind = TD_SCHED_POOL;
            /* oldest first, as the scheduler numbers them */
            int order[TD_JOB_MAX_REPLICAS], n = j->n_rep;
            for (int k = 0; k < n; k++)
                order[k] = k;
            for (int a = 1; a < n; a++)
                for (int b = a; b > 0 && j->rep[order[b]].seq < j->rep[order[b - 1]].seq; b--) {
                    int t = order[b];
                    order[b] = order[b - 1];
                    order[b - 1] = t;
                }
            s->replicas = n < TD_SCHED_MAX_REPLICAS ? n : TD_SCHED_MAX_REPLICAS;
            for (int k = 0; k < s->replicas; k++) {
                s->replica[k].n[0] = j->ranks;
                pool_seq[ns - 1][k] = j->rep[order[k]].seq;
            }
            s->min_replicas = j->pool_min;
            s->max_replicas = j->pool_max;
            s->want_replicas = j->pool_want;
            s->per_replica_queue = j->pool_per_queue;
            s->queue_len = pool_queue(d, j);
            continue;
        }
        s->kind = TD_SCHED_BATCH;
        s->state = j->state == TD_JOB_RUNNING ? TD_SCHED_RUNNING : TD_SCHED_QUEUED;
        s->limit_s = j->limit_s;
        s->started_at = j->started_at;
        /* training stops with a checkpoint on SIGTERM and resumes */
        s->preemptible = !strcmp(j->kind, "train") || !strcmp(j->kind, "finetune");
        if (j->state == TD_JOB_RUNNING) s->held.n[0] = j->ranks;
    }
    td_sched_host host = {"localhost", d->o.slots - held,
                          td_jobs_host_draining(d->jobs, "localhost")};
    td_sched_snapshot snap = {&host, 1, sj, ns, now_s()};
    td_sched_action acts[32];
    int na = td_sched_plan(&snap, acts, 32);
    for (int a = 0; a < na; a++) {
        const td_job *j = td_jobs_find(d->jobs, acts[a].job);
        if (!j) continue;
        td_status st = TD_OK;
        if (acts[a].verb == TD_SCHED_START) {
            st = launch(d, j, &acts[a].place);
        } else if (acts[a].verb == TD_SCHED_SCALE_UP) {
            st = launch_replica(d, j, &acts[a].place);
        } else if (acts[a].verb == TD_SCHED_SCALE_DOWN) {
            /* an idle pool shrinks only once the queue has been watched for a whole window
             * (a coordinator just started has no history of it) */
            if (acts[a].for_job < 0 && now_s() - d->started_at < QUEUE_WINDOW) continue;
            int k = 0;
            while (k < ns && sj[k].id != acts[a].job)
                k++;
            char why[80];
            if (acts[a].for_job >= 0)
                snprintf(why, sizeof why, "its slots go to job %d", acts[a].for_job);
            else
                snprintf(why, sizeof why, "the pool is idle");
            if (k < ns && acts[a].replica >= 0 && acts[a].replica < sj[k].replicas)
                stop_replica(d, j, pool_seq[k][acts[a].replica], why);
        } else if (acts[a].verb == TD_SCHED_PREEMPT && !j->preempting) {
            long id = j->id, pid = j->pid;
            st = record(d, event("preempt", id));
            if (st == TD_OK) {
                stop_gently(pid);
                job_rt *rt = rt_of(d, id);
                if (rt) rt->kill_at = now_s() + d->o.cancel_grace_s;
                TD_LOG_INFO("job %ld: preempted for job %d: stopping with a checkpoint", id,
                            acts[a].for_job);
            }
        }
        if (st != TD_OK)
            TD_LOG_ERROR("job %ld: %s: %s", (long)acts[a].job, td_sched_verb_name(acts[a].verb),
                         td_error_message());
    }
    free(sj);
    free(pool_seq);
}

/* ---------------------------------------------------------------------------------------- */
/* the serving plane: the router and the gateway, hosted; what the router sees */

static void *run_router(void *p) {
    coord *d = p;
    if (td_router_run(d->router, &d->router_stop) != TD_OK)
        TD_LOG_ERROR("coordinator: the router stopped: %s", td_error_message());
    return NULL;
}

static td_status serving_start(coord *d) {
    td_router_opts ro = {.front = FRONT,
                         .back = d->o.replicas,
                         .queue_max = 256,
                         .queue_timeout_s = 30,
                         .heartbeat_ms = 1000,
                         .zctx = d->zctx,
                         .insecure = d->o.insecure,
                         .zap_running = d->zap != NULL};
    TD_TRY(td_router_new(&ro, &d->router));
    if (pthread_create(&d->router_th, NULL, run_router, d) != 0)
        return td_error_set(TD_ERR_RUNTIME, "cannot start the router thread");
    d->router_running = 1;
    if (d->o.http) {
        td_gateway_opts go = {.listen = d->o.http,
                              .router = FRONT,
                              .max_body = 1u << 20,
                              .timeout_s = 120,
                              .zctx = d->zctx,
                              .router_heartbeat_ms = 1000,
                              .insecure = d->o.insecure};
        TD_TRY(td_gateway_new(&go, &d->gateway));
    }
    d->status_sock = zmq_socket(d->zctx, ZMQ_DEALER);
    if (!d->status_sock) return td_error_set(TD_ERR_RUNTIME, "zmq_socket: %s", zmq_strerror(errno));
    int zero = 0;
    zmq_setsockopt(d->status_sock, ZMQ_LINGER, &zero, sizeof zero);
    if (!d->o.insecure) TD_TRY(td_keys_client(d->status_sock));
    if (zmq_connect(d->status_sock, FRONT) != 0)
        return td_error_set(TD_ERR_RUNTIME, "cannot connect to the router: %s",
                            zmq_strerror(errno));
    return TD_OK;
}

static void serving_stop(coord *d) {
    if (d->status_sock) zmq_close(d->status_sock);
    d->status_sock = NULL;
    td_gateway_free(&d->gateway);
    d->router_stop = 1;
    if (d->router_running) pthread_join(d->router_th, NULL);
    d->router_running = 0;
    td_router_free(&d->router);
}

/* Asks the router for its models every second and keeps the latest answer. */
static void serving_watch(coord *d) {
    if (!d->status_sock) return;
    double now = now_s();
    if (now - d->status_asked_at >= 1) {
        Tandem__StatusRequest q = TANDEM__STATUS_REQUEST__INIT;
        td_env e = TANDEM__ENVELOPE__INIT;
        e.body_case = TANDEM__ENVELOPE__BODY_STATUS_REQUEST;
        e.status_request = &q;
        if (td_wire_send(d->status_sock, NULL, 0, &e) != TD_OK) td_error_clear();
        d->status_asked_at = now;
    }
    for (;;) {
        td_env *r = NULL;
        if (td_wire_recv(d->status_sock, NULL, NULL, 0, &r) != TD_OK || !r) {
            td_error_clear();
            return;
        }
        if (r->body_case == TANDEM__ENVELOPE__BODY_STATUS) {
            d->status_at = now;
            d->n_models = 0;
            for (size_t i = 0; i < r->status->n_models && d->n_models < MAX_MODELS; i++) {
                model_seen *m = &d->models[d->n_models++];
                snprintf(m->name, sizeof m->name, "%s", r->status->models[i]->name);
                m->up = (int)r->status->models[i]->replicas_up;
                m->queue = (int)r->status->models[i]->queue_length;
            }
        }
        td_wire_free(r);
    }
}

/* A running serve job's model names (from its run file, read once). */
static const char *serve_models(coord *d, const td_job *j) {
    job_rt *rt = rt_of(d, j->id);
    if (!rt) return "";
    if (!rt->models_read) {
        char p[1300];
        snprintf(p, sizeof p, "%s/jobs/%ld/job.json", d->o.state_dir, j->id);
        cJSON *doc = NULL;
        rt->models[0] = 0;
        if (td_json_load_file(p, &doc) == TD_OK)
            td_stage_serve_names(doc, rt->models, sizeof rt->models);
        else
            td_error_clear();
        cJSON_Delete(doc);
        rt->models_read = 1;
    }
    return rt->models;
}

/* 1 when every model of a running serve job has a replica up at the router. */
static int serving(coord *d, const td_job *j) {
    const char *names = serve_models(d, j);
    if (!names[0]) return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", names);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int up = 0;
        for (int i = 0; i < d->n_models; i++)
            if (!strcmp(d->models[i].name, t)) up = d->models[i].up;
        if (up < 1) return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* the control socket */

static void reply(coord *d, const uint8_t *ident, size_t ilen, Tandem__ControlReply *r) {
    r->has_slots = 1;
    r->slots = (uint32_t)d->o.slots;
    static char *hosts[1] = {"localhost"};
    static uint32_t slots[1];
    slots[0] = (uint32_t)d->o.slots;
    r->n_hosts = r->n_host_slots = 1;
    r->hosts = hosts;
    r->host_slots = slots;
    char *drain[64];
    size_t nd = 0;
    for (const char *h; nd < 64 && (h = td_jobs_draining_at(d->jobs, (int)nd));)
        drain[nd++] = (char *)h;
    r->n_draining = nd;
    r->draining = drain;
    td_env env = TANDEM__ENVELOPE__INIT;
    env.body_case = TANDEM__ENVELOPE__BODY_CONTROL_REPLY;
    env.control_reply = r;
    if (td_wire_send(d->sock, ident, ilen, &env) != TD_OK)
        TD_LOG_WARN("control reply not sent: %s", td_error_message());
}

static void refuse(coord *d, const uint8_t *ident, size_t ilen, const char *msg) {
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    r.error = (char *)msg;
    reply(d, ident, ilen, &r);
}

/* Refuses with the message of the error just set (the reply is packed before anything can
 * set another), then clears it. */
static void refuse_error(coord *d, const uint8_t *ident, size_t ilen) {
    refuse(d, ident, ilen, td_error_message());
    td_error_clear();
}

/* The submit event of one job (a stage of a pipeline when pl is set). */
static cJSON *submit_event(long id, const char *kind, const char *file, const char *dir, int ranks,
                           int priority, double limit_s, int max_restarts) {
    cJSON *ev = event("submit", id);
    cJSON_AddStringToObject(ev, "kind", kind);
    cJSON_AddStringToObject(ev, "file", file);
    cJSON_AddStringToObject(ev, "dir", dir);
    cJSON_AddNumberToObject(ev, "ranks", ranks);
    cJSON_AddNumberToObject(ev, "priority", priority);
    cJSON_AddNumberToObject(ev, "limit_s", limit_s);
    cJSON_AddNumberToObject(ev, "max_restarts", max_restarts);
    return ev;
}

/* A serve job file's "pool" section ({"min", "max", "replicas", "per_replica_queue"}) as
 * the fields of its submit event; nothing for a file without one. */
static td_status pool_fields(const char *file, int ranks, int slots, cJSON *ev) {
    cJSON *doc = NULL;
    TD_TRY(td_json_load_file(file, &doc));
    const cJSON *pool = cJSON_GetObjectItemCaseSensitive(doc, "pool");
    td_status s = TD_OK;
    if (pool) {
        static const char *const keys[] = {"min", "max", "replicas", "per_replica_queue", NULL};
        int64_t mn = 1, mx = 0, want = 0, pq = 4;
        char where[1100];
        snprintf(where, sizeof where, "%s: pool", file);
        if (!cJSON_IsObject(pool) || !cJSON_GetObjectItemCaseSensitive(doc, "serve"))
            s = td_error_set(TD_ERR_INVALID, "%s: an object, in a serve job file", where);
        if (s == TD_OK) s = td_json_check_keys(pool, where, keys, NULL);
        if (s == TD_OK) s = td_json_get_int(pool, where, "min", 0, &mn);
        if (s == TD_OK) s = td_json_get_int(pool, where, "max", 1, &mx);
        want = mn;
        if (s == TD_OK) s = td_json_get_int(pool, where, "replicas", 0, &want);
        if (s == TD_OK) s = td_json_get_int(pool, where, "per_replica_queue", 0, &pq);
        if (s == TD_OK && !(mn >= 1 && mn <= mx && mx <= TD_SCHED_MAX_REPLICAS && want >= mn &&
                            want <= mx && pq >= 1 && pq <= 1 << 20))
            s = td_error_set(TD_ERR_INVALID,
                             "%s: 1 <= min <= replicas <= max <= %d, per_replica_queue >= 1", where,
                             TD_SCHED_MAX_REPLICAS);
        if (s == TD_OK && mn * ranks > slots)
            s = td_error_set(TD_ERR_INVALID,
                             "%s: min %lld replicas of %d ranks need %lld slots; the pool has %d",
                             where, (long long)mn, ranks, (long long)(mn * ranks), slots);
        if (s == TD_OK) {
            cJSON_AddNumberToObject(ev, "pool_min", (double)mn);
            cJSON_AddNumberToObject(ev, "pool_max", (double)mx);
            cJSON_AddNumberToObject(ev, "pool_replicas", (double)want);
            cJSON_AddNumberToObject(ev, "pool_per_queue", (double)pq);
        }
    }
    cJSON_Delete(doc);
    return s;
}

/* A pipeline: one job per stage, ids in the order of its stages, each naming the jobs it
 * waits for and takes inputs from. */
static void submit_pipeline(coord *d, const uint8_t *ident, size_t ilen,
                            const Tandem__JobSubmit *m) {
    static td_pipeline pl;
    if (td_pipeline_load(m->file, d->o.slots, &pl) != TD_OK) {
        return refuse_error(d, ident, ilen);
    }
    /* every stage's event is made (its file copied, its pool checked) before any is
     * journaled: a pipeline is queued whole or not at all */
    long first = td_jobs_next_id(d->jobs);
    uint64_t ids[TD_PIPELINE_MAX_STAGES];
    cJSON *evs[TD_PIPELINE_MAX_STAGES] = {0};
    for (int i = 0; i < pl.n; i++) {
        const td_stage_spec *st = &pl.stage[i];
        long id = first + i;
        evs[i] = submit_event(id, st->kind, st->job, m->dir, st->ranks,
                              st->priority + (m->has_priority ? m->priority : 0), st->limit_s,
                              st->max_restarts);
        if (pool_fields(st->job, st->ranks, d->o.slots, evs[i]) != TD_OK ||
            keep_submitted(d, id, st->job) != TD_OK) {
            for (int k = 0; k <= i; k++)
                cJSON_Delete(evs[k]);
            return refuse_error(d, ident, ilen);
        }
        cJSON_AddStringToObject(evs[i], "pipeline", pl.name);
        cJSON_AddStringToObject(evs[i], "stage", st->name);
        cJSON *after = cJSON_AddArrayToObject(evs[i], "after");
        for (int k = 0; k < st->n_after; k++)
            cJSON_AddItemToArray(after, cJSON_CreateNumber((double)(first + st->after[k])));
        cJSON *in = cJSON_AddObjectToObject(evs[i], "inputs");
        for (int k = 0; k < st->n_inputs; k++)
            cJSON_AddNumberToObject(in, st->input_key[k], (double)(first + st->input_from[k]));
        ids[i] = (uint64_t)id;
    }
    for (int i = 0; i < pl.n; i++) {
        td_status s = record(d, evs[i]);
        evs[i] = NULL;
        if (s != TD_OK) {
            for (int k = i + 1; k < pl.n; k++)
                cJSON_Delete(evs[k]);
            return refuse(d, ident, ilen, td_error_message());
        }
        TD_LOG_INFO("job %ld: submitted (pipeline %s, stage %s: %s %s, %d ranks)", first + i,
                    pl.name, pl.stage[i].name, pl.stage[i].kind, pl.stage[i].job,
                    pl.stage[i].ranks);
    }
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    r.has_id = 1;
    r.id = (uint64_t)first;
    r.n_ids = (size_t)pl.n;
    r.ids = ids;
    reply(d, ident, ilen, &r);
}

static void on_submit(coord *d, const uint8_t *ident, size_t ilen, const Tandem__JobSubmit *m) {
    char msg[1400];
    struct stat st;
    if (m->file[0] != '/' || stat(m->file, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(msg, sizeof msg, "%s: not a job file the coordinator can read (an absolute path)",
                 m->file);
        return refuse(d, ident, ilen, msg);
    }
    if (m->dir[0] != '/' || !td_fs_is_dir(m->dir)) {
        snprintf(msg, sizeof msg, "%s: not a directory", m->dir);
        return refuse(d, ident, ilen, msg);
    }
    /* the kind is the file's, read here: a client's word for it is only checked */
    cJSON *doc = NULL;
    if (td_json_load_file(m->file, &doc) != TD_OK) return refuse_error(d, ident, ilen);
    const char *kind = td_stage_kind(doc);
    td_status s = kind ? td_stage_check(kind, doc, m->file) : TD_OK;
    cJSON_Delete(doc);
    if (!kind || s != TD_OK) {
        if (!kind)
            snprintf(msg, sizeof msg,
                     "%s: not a job file: a JSON object with a \"pipeline\", \"prep\", "
                     "\"serve\", \"finetune\" or \"model\" (train) section",
                     m->file);
        else
            snprintf(msg, sizeof msg, "%s", td_error_message());
        td_error_clear();
        return refuse(d, ident, ilen, msg);
    }
    if (strcmp(kind, m->kind)) {
        snprintf(msg, sizeof msg, "%s is a %s job file, not %s", m->file, kind, m->kind);
        return refuse(d, ident, ilen, msg);
    }
    if (!strcmp(kind, "pipeline")) return submit_pipeline(d, ident, ilen, m);
    if (!td_stage_runs(kind)) {
        snprintf(msg, sizeof msg, "%s: the coordinator does not run %s jobs yet", m->file, kind);
        return refuse(d, ident, ilen, msg);
    }
    if ((int)m->ranks > d->o.slots) {
        snprintf(msg, sizeof msg, "the job needs %u ranks; the pool has %d slots", m->ranks,
                 d->o.slots);
        return refuse(d, ident, ilen, msg);
    }
    long id = td_jobs_next_id(d->jobs);
    cJSON *ev = submit_event(id, kind, m->file, m->dir, (int)m->ranks,
                             m->has_priority ? m->priority : 0, m->has_limit_s ? m->limit_s : 0,
                             m->has_max_restarts ? (int)m->max_restarts : 0);
    if (pool_fields(m->file, (int)m->ranks, d->o.slots, ev) != TD_OK ||
        keep_submitted(d, id, m->file) != TD_OK) {
        cJSON_Delete(ev);
        return refuse_error(d, ident, ilen);
    }
    if (record(d, ev) != TD_OK) return refuse(d, ident, ilen, td_error_message());
    TD_LOG_INFO("job %ld: submitted (%s %s, %u ranks)", id, kind, m->file, m->ranks);
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    r.has_id = 1;
    r.id = (uint64_t)id;
    reply(d, ident, ilen, &r);
}

static void on_cancel(coord *d, const uint8_t *ident, size_t ilen, uint64_t id) {
    char msg[200];
    const td_job *j = td_jobs_find(d->jobs, (long)id);
    if (!j) {
        snprintf(msg, sizeof msg, "no job %llu", (unsigned long long)id);
        return refuse(d, ident, ilen, msg);
    }
    if (td_job_state_final(j->state)) {
        snprintf(msg, sizeof msg, "job %llu has ended (%s)", (unsigned long long)id,
                 td_job_state_name(j->state));
        return refuse(d, ident, ilen, msg);
    }
    if (j->cancel_asked) { /* asked before: it is on its way out, its SIGKILL timer runs */
        Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
        r.has_id = 1;
        r.id = id;
        return reply(d, ident, ilen, &r);
    }
    if (record(d, event("cancel", (long)id)) != TD_OK)
        return refuse(d, ident, ilen, td_error_message());
    j = td_jobs_find(d->jobs, (long)id);
    if (j->state == TD_JOB_RUNNING) {
        /* every replica of a pool, or the job's launcher */
        for (int k = 0; k < (j->pool_max > 0 ? j->n_rep : 1); k++) {
            long pid = j->pool_max > 0 ? j->rep[k].pid : j->pid;
            stop_gently(pid);
        }
        job_rt *rt = rt_of(d, j->id);
        if (rt)
            rt->kill_at =
                now_s() + d->o.cancel_grace_s + (!strcmp(j->kind, "serve") ? SERVE_DRAIN_S : 0);
    }
    TD_LOG_INFO("job %llu: cancel (%s)", (unsigned long long)id, td_job_state_name(j->state));
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    r.has_id = 1;
    r.id = id;
    reply(d, ident, ilen, &r);
}

static void on_drain(coord *d, const uint8_t *ident, size_t ilen, const Tandem__HostDrain *m) {
    if (strcmp(m->host, "localhost")) {
        char msg[400];
        snprintf(msg, sizeof msg, "no host \"%.256s\" in the pool (its hosts: localhost)", m->host);
        return refuse(d, ident, ilen, msg);
    }
    cJSON *ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "event", m->undo ? "undrain" : "drain");
    cJSON_AddStringToObject(ev, "host", m->host);
    cJSON_AddNumberToObject(ev, "at", now_s());
    if (record(d, ev) != TD_OK) return refuse(d, ident, ilen, td_error_message());
    TD_LOG_INFO("host %s: %s", m->host,
                m->undo ? "open again" : "draining: nothing new is placed there");
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    reply(d, ident, ilen, &r);
}

static void on_list(coord *d, const uint8_t *ident, size_t ilen) {
    int n = td_jobs_count(d->jobs);
    Tandem__JobInfo *info = calloc((size_t)n + 1, sizeof *info);
    Tandem__JobInfo **ptr = calloc((size_t)n + 1, sizeof *ptr);
    char(*logs)[1300] = calloc((size_t)n + 1, sizeof *logs);
    char(*runs)[1300] = calloc((size_t)n + 1, sizeof *runs);
    uint64_t(*after)[TD_JOB_MAX_AFTER] = calloc((size_t)n + 1, sizeof *after);
    if (!info || !ptr || !logs || !runs || !after) {
        free(info);
        free(ptr);
        free(logs);
        free(runs);
        free(after);
        return refuse(d, ident, ilen, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const td_job *j = td_jobs_at(d->jobs, i);
        Tandem__JobInfo *x = &info[i];
        tandem__job_info__init(x);
        x->id = (uint64_t)j->id;
        x->kind = (char *)j->kind;
        x->file = (char *)j->file;
        x->ranks = (uint32_t)j->ranks;
        x->state = (char *)td_job_state_name(j->state);
        x->has_priority = 1, x->priority = j->priority;
        x->has_attempt = 1, x->attempt = (uint32_t)j->attempt;
        x->hosts = (char *)j->hosts;
        x->has_submitted_at = 1, x->submitted_at = j->submitted_at;
        x->has_started_at = j->attempt > 0, x->started_at = j->started_at;
        x->has_ended_at = td_job_state_final(j->state), x->ended_at = j->ended_at;
        x->has_rc = j->attempt > 0 && j->state != TD_JOB_RUNNING, x->rc = j->rc;
        x->reason = (char *)j->reason;
        x->has_pid = j->state == TD_JOB_RUNNING, x->pid = (uint64_t)j->pid;
        x->has_cancel_asked = 1, x->cancel_asked = j->cancel_asked;
        x->dir = (char *)j->dir;
        x->has_max_restarts = 1, x->max_restarts = (uint32_t)j->max_restarts;
        x->has_restarts = 1, x->restarts = (uint32_t)j->restarts;
        x->has_limit_s = 1, x->limit_s = j->limit_s;
        snprintf(logs[i], sizeof logs[i], "%s/jobs/%ld/log", d->o.state_dir, j->id);
        x->log = logs[i];
        x->pipeline = j->pipeline[0] ? (char *)j->pipeline : NULL;
        x->stage = j->stage[0] ? (char *)j->stage : NULL;
        for (int k = 0; k < j->n_after; k++)
            after[i][k] = (uint64_t)j->after[k];
        x->n_after = (size_t)j->n_after;
        x->after = after[i];
        if (j->attempt > 0) {
            snprintf(runs[i], sizeof runs[i], "%s/jobs/%ld/job.json", d->o.state_dir, j->id);
            x->run_file = runs[i];
        }
        if (j->pool_max > 0) {
            x->has_replicas = x->has_pool_min = x->has_pool_max = x->has_pool_want = 1;
            x->replicas = (uint32_t)j->n_rep;
            x->pool_min = (uint32_t)j->pool_min;
            x->pool_max = (uint32_t)j->pool_max;
            x->pool_want = (uint32_t)j->pool_want;
        }
        if (!strcmp(j->kind, "serve") && j->state == TD_JOB_RUNNING) {
            x->models = (char *)serve_models(d, j);
            if (serving(d, j)) x->state = "serving";
        }
        ptr[i] = x;
    }
    Tandem__ControlReply r = TANDEM__CONTROL_REPLY__INIT;
    r.n_jobs = (size_t)n;
    r.jobs = ptr;
    reply(d, ident, ilen, &r);
    free(ptr);
    free(info);
    free(logs);
    free(runs);
    free(after);
}

/* One request from the control socket (waits up to 100 ms): the client's identity frame,
 * then one frame that td_control_decode accepts; anything else gets an error reply. */
static void serve_control(coord *d) {
    zmq_pollitem_t it = {d->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 100) <= 0) return;
    uint8_t ident[256];
    size_t ilen = 0, frames = 0;
    zmq_msg_t m, body;
    zmq_msg_init(&body);
    for (int more = 1; more;) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, d->sock, 0) < 0) {
            zmq_msg_close(&m);
            zmq_msg_close(&body);
            return;
        }
        more = zmq_msg_more(&m);
        if (frames == 0) {
            ilen = zmq_msg_size(&m) < sizeof ident ? zmq_msg_size(&m) : sizeof ident - 1;
            memcpy(ident, zmq_msg_data(&m), ilen);
            zmq_msg_close(&m);
        } else if (frames == 1) {
            zmq_msg_move(&body, &m);
            zmq_msg_close(&m);
        } else {
            zmq_msg_close(&m);
        }
        frames++;
    }
    char msg[200];
    td_env *env = NULL;
    if (frames != 2)
        snprintf(msg, sizeof msg, "a control request is one frame (this message had %zu)",
                 frames > 0 ? frames - 1 : 0);
    else
        env = td_control_decode(zmq_msg_data(&body), zmq_msg_size(&body), msg, sizeof msg);
    zmq_msg_close(&body);
    if (!env) {
        TD_LOG_WARN("control: refused a request: %s", msg);
        return refuse(d, ident, ilen, msg);
    }
    switch (env->body_case) {
    case TANDEM__ENVELOPE__BODY_JOB_SUBMIT:
        on_submit(d, ident, ilen, env->job_submit);
        break;
    case TANDEM__ENVELOPE__BODY_JOB_CANCEL:
        on_cancel(d, ident, ilen, env->job_cancel->id);
        break;
    case TANDEM__ENVELOPE__BODY_HOST_DRAIN:
        on_drain(d, ident, ilen, env->host_drain);
        break;
    default:
        on_list(d, ident, ilen);
        break;
    }
    td_wire_free(env);
}

/* ---------------------------------------------------------------------------------------- */

static td_status replay_event(void *ctx, const cJSON *rec, long line) {
    (void)line;
    return td_jobs_apply(ctx, rec);
}

static td_status open_socket(coord *d) {
    d->zctx = zmq_ctx_new();
    if (!d->zctx) return td_error_set(TD_ERR_RUNTIME, "zmq_ctx_new: %s", zmq_strerror(errno));
    if (!d->o.insecure) TD_TRY(td_zap_start(d->zctx, &d->zap));
    d->sock = zmq_socket(d->zctx, ZMQ_ROUTER);
    if (!d->sock) return td_error_set(TD_ERR_RUNTIME, "zmq_socket: %s", zmq_strerror(errno));
    int one = 1, zero = 0;
    zmq_setsockopt(d->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(d->sock, ZMQ_LINGER, &zero, sizeof zero);
    int64_t most = TD_WIRE_MAX_FRAME; /* beyond this ZeroMQ drops the peer unread */
    zmq_setsockopt(d->sock, ZMQ_MAXMSGSIZE, &most, sizeof most);
    if (d->o.insecure)
        td_keys_warn_insecure("the coordinator's control socket");
    else
        TD_TRY(td_keys_server(d->sock));
    if (zmq_bind(d->sock, d->o.control) != 0) {
        int e = errno;
        return td_error_set(e == EINVAL || e == EPROTONOSUPPORT ? TD_ERR_INVALID : TD_ERR_IO,
                            "cannot bind the control socket %s: %s", d->o.control, zmq_strerror(e));
    }
    return TD_OK;
}

td_status td_daemon_run(const td_daemon_opts *o) {
    coord d = {.o = *o, .started_at = now_s()};
    g_slurm = o->slurm;
    if (d.o.cancel_grace_s <= 0) d.o.cancel_grace_s = 3;
    td_status s = td_fs_mkdirs(o->state_dir);
    /* absolute: jobs run in their own directories, and their shells write here */
    static char state_abs[4096];
    if (s == TD_OK && !realpath(o->state_dir, state_abs))
        s = td_error_set(TD_ERR_IO, "%s: %s", o->state_dir, strerror(errno));
    d.o.state_dir = state_abs;
    char jp[4200];
    snprintf(jp, sizeof jp, "%s/journal", d.o.state_dir);
    if (s == TD_OK) s = td_jobs_new(&d.jobs);
    if (s == TD_OK) s = td_journal_open(jp, replay_event, d.jobs, &d.journal);
    if (s == TD_OK) s = open_socket(&d);
    if (s == TD_OK && !d.o.replicas)
        s = td_error_set(TD_ERR_INVALID, "the router's back end (--replicas) is not set");
    if (s == TD_OK) s = serving_start(&d);
    if (s == TD_OK) {
        int q = 0, r = 0;
        for (int i = 0; i < td_jobs_count(d.jobs); i++) {
            const td_job *j = td_jobs_at(d.jobs, i);
            q += j->state == TD_JOB_QUEUED;
            r += j->state == TD_JOB_RUNNING;
        }
        TD_LOG_INFO("coordinator: %d slots, control %s, journal %s: %d jobs (%d queued, %d "
                    "running)",
                    o->slots, o->control, jp, td_jobs_count(d.jobs), q, r);
        struct sigaction sa = {0};
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (d.gateway)
            TD_LOG_INFO("coordinator: gateway on http://%.*s:%d, replicas register at %s",
                        (int)(strrchr(o->http, ':') - o->http), o->http, td_gateway_port(d.gateway),
                        td_router_back_endpoint(d.router));
        else
            TD_LOG_INFO("coordinator: replicas register at %s (no --http: no gateway)",
                        td_router_back_endpoint(d.router));
        while (!g_stop) {
            serve_control(&d);
            serving_watch(&d);
            watch(&d);
            if (!g_stop) schedule(&d);
        }
        TD_LOG_INFO("coordinator: stopping; running jobs keep running");
    }
    serving_stop(&d);
    if (d.sock) zmq_close(d.sock);
    td_zap_stop(&d.zap);
    if (d.zctx) zmq_ctx_term(d.zctx);
    td_journal_free(&d.journal);
    td_jobs_free(&d.jobs);
    free(d.rt);
    return s;
}
