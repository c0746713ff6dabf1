/* `tandem coordinator` (the daemon, coordinator/daemon.c) and its clients `tandem submit`,
 * `tandem ps`, `tandem cancel` (docs/coordinator.md). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "cli/cli.h"
#include "common/json.h"
#include "common/log.h"
#include "coordinator/daemon.h"
#include "coordinator/stages.h"
#include "proto/keys.h"
#include "proto/wire.h"

#define DEFAULT_CONTROL "tcp://127.0.0.1:5580"
#define DEFAULT_REPLICAS "tcp://127.0.0.1:5581"

static const char *default_control(void) {
    const char *e = getenv("TANDEM_COORDINATOR");
    return e && *e ? e : DEFAULT_CONTROL;
}

/* ---------------------------------------------------------------------------------------- */

static void coordinator_help(FILE *f) {
    fprintf(f,
            "usage: tandem coordinator --state DIR [--slots N] [--control EP] [options]\n"
            "\n"
            "The long-lived daemon that owns this machine's worker slots: it keeps the job\n"
            "table (DIR/journal, replayed on start: a coordinator killed and started again\n"
            "loses no job), queues what `tandem submit` sends (jobs and pipelines of\n"
            "stages), places jobs with all their ranks or none (gang), runs them under\n"
            "mpirun, restarts failures up to their max_restarts (resuming their checkpoint),\n"
            "and cancels. It hosts the request router that serve jobs register with and,\n"
            "with --http, the HTTP gateway (OpenAI and Ollama APIs) in front of every model\n"
            "the pool serves. See docs/coordinator.md.\n"
            "\n"
            "  --state DIR       journal, hostfiles and job logs (DIR/jobs/ID/log)\n"
            "  --slots N         worker slots (ranks) of this machine (default: its cores)\n"
            "  --control EP      control socket (default $TANDEM_COORDINATOR, else %s)\n"
            "  --http HOST:PORT  serve the gateway here (port 0: any free port, logged)\n"
            "  --replicas EP     the router's back end, where serve jobs register (default\n"
            "                    " DEFAULT_REPLICAS ")\n"
            "  --cancel-grace S  seconds between a cancel's SIGTERM and SIGKILL (default 3)\n"
            "  --launcher L      mpirun (default): ranks on this machine; slurm: each job\n"
            "                    a Slurm job (srun --mpi=pmix, named tandem-SID, seen in\n"
            "                    squeue), stopped and cancelled with scancel\n"
            "  --insecure        no CURVE on the control socket (anyone who reaches it can\n"
            "                    start jobs); by default only clients whose public key is in\n"
            "                    the key directory's allowed/ connect (docs/router.md)\n"
            "  -h, --help        this text\n",
            DEFAULT_CONTROL);
}

int td_cmd_coordinator(int argc, char **argv) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    td_daemon_opts o = {.control = default_control(),
                        .slots = cores > 0 ? (int)cores : 1,
                        .cancel_grace_s = 3,
                        .replicas = DEFAULT_REPLICAS};
    static const struct option opts[] = {
        {"state", required_argument, 0, 's'},    {"slots", required_argument, 0, 'n'},
        {"control", required_argument, 0, 'c'},  {"cancel-grace", required_argument, 0, 'g'},
        {"insecure", no_argument, 0, 'I'},       {"http", required_argument, 0, 'H'},
        {"replicas", required_argument, 0, 'R'}, {"launcher", required_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    int c;
    long v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            o.state_dir = optarg;
            break;
        case 'n':
            if (!td_cli_long(optarg, 1, 4096, &v)) {
                fprintf(stderr, "tandem coordinator: --slots %s: a whole number, 1..4096\n",
                        optarg);
                return 2;
            }
            o.slots = (int)v;
            break;
        case 'c':
            o.control = optarg;
            break;
        case 'g':
            if (!td_cli_long(optarg, 1, 3600, &v)) {
                fprintf(stderr, "tandem coordinator: --cancel-grace %s: seconds, 1..3600\n",
                        optarg);
                return 2;
            }
            o.cancel_grace_s = (double)v;
            break;
        case 'I':
            o.insecure = 1;
            break;
        case 'H':
            if (!strrchr(optarg, ':')) {
                fprintf(stderr, "tandem coordinator: --http %s: HOST:PORT\n", optarg);
                return 2;
            }
            o.http = optarg;
            break;
        case 'R':
            o.replicas = optarg;
            break;
        case 'L':
            if (strcmp(optarg, "mpirun") && strcmp(optarg, "slurm")) {
                fprintf(stderr, "tandem coordinator: --launcher %s: one of mpirun, slurm\n",
                        optarg);
                return 2;
            }
            o.slurm = !strcmp(optarg, "slurm");
            break;
        case 'h':
            coordinator_help(stdout);
            return 0;
        default:
            coordinator_help(stderr);
            return 2;
        }
    }
    if (!o.state_dir || optind != argc) {
        fprintf(stderr, "tandem coordinator: %s\n",
                !o.state_dir ? "--state DIR is required" : "unexpected argument");
        coordinator_help(stderr);
        return 2;
    }
    static char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "tandem coordinator: cannot find its own binary: %s\n", strerror(errno));
        return 1;
    }
    self[n] = 0;
    o.tandem = self;
    td_status s = td_daemon_run(&o);
    return s == TD_OK ? 0 : td_cli_fail("coordinator", s);
}

/* ---------------------------------------------------------------------------------------- */
/* clients */

typedef struct {
    const char *control;
    int insecure, json;
} client_opts;

/* Sends one request and waits for the reply (5 s). *reply is freed with td_wire_free. */
static td_status ask(const client_opts *co, const td_env *req, td_env **reply) {
    *reply = NULL;
    void *ctx = zmq_ctx_new(), *sock = ctx ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    td_status s = TD_OK;
    if (!sock) s = td_error_set(TD_ERR_RUNTIME, "zmq: %s", zmq_strerror(errno));
    int zero = 0;
    if (s == TD_OK) zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    if (s == TD_OK && !co->insecure) s = td_keys_client(sock);
    if (s == TD_OK && zmq_connect(sock, co->control) != 0)
        s = td_error_set(TD_ERR_INVALID, "cannot connect to %s: %s", co->control,
                         zmq_strerror(errno));
    if (s == TD_OK) s = td_wire_send(sock, NULL, 0, req);
    if (s == TD_OK) s = td_wire_recv(sock, NULL, NULL, 5000, reply);
    if (s == TD_OK && !*reply)
        s = td_error_set(TD_ERR_RUNTIME,
                         "no answer from the coordinator at %s within 5 s: is `tandem "
                         "coordinator` running there (and does it know this host's key)?",
                         co->control);
    if (s == TD_OK && (*reply)->body_case != TANDEM__ENVELOPE__BODY_CONTROL_REPLY) {
        td_wire_free(*reply);
        *reply = NULL;
        s = td_error_set(TD_ERR_RUNTIME, "%s answered something else than a coordinator reply",
                         co->control);
    }
    if (s == TD_OK && (*reply)->control_reply->error) {
        s = td_error_set(TD_ERR_INVALID, "the coordinator refused: %s",
                         (*reply)->control_reply->error);
        td_wire_free(*reply);
        *reply = NULL;
    }
    if (sock) zmq_close(sock);
    if (ctx) zmq_ctx_term(ctx);
    return s;
}

/* The coordinator's job table (ps, logs); *reply is freed with td_wire_free. */
static td_status list_jobs(const client_opts *co, td_env **reply) {
    Tandem__JobList m = TANDEM__JOB_LIST__INIT;
    td_env req = TANDEM__ENVELOPE__INIT;
    req.body_case = TANDEM__ENVELOPE__BODY_JOB_LIST;
    req.job_list = &m;
    return ask(co, &req, reply);
}

/* Common options of the clients; returns 0 to go on, else an exit code. */
static int client_args(const char *cmd, int argc, char **argv, client_opts *co,
                       const struct option *extra, int (*on_extra)(int c, void *u), void *u,
                       void (*help)(FILE *)) {
    struct option opts[16];
    int k = 0;
    opts[k++] = (struct option){"coordinator", required_argument, 0, 'C'};
    opts[k++] = (struct option){"insecure", no_argument, 0, 'I'};
    opts[k++] = (struct option){"json", no_argument, 0, 'j'};
    opts[k++] = (struct option){"help", no_argument, 0, 'h'};
    for (int i = 0; extra && extra[i].name && k < 15; i++)
        opts[k++] = extra[i];
    opts[k] = (struct option){0, 0, 0, 0};
    co->control = default_control();
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'C')
            co->control = optarg;
        else if (c == 'I')
            co->insecure = 1;
        else if (c == 'j')
            co->json = 1;
        else if (c == 'h') {
            help(stdout);
            return -1;
        } else if (c == '?' || !on_extra || on_extra(c, u) != 0) {
            if (c == '?') help(stderr);
            return 2;
        }
    }
    (void)cmd;
    return 0;
}

#define CLIENT_OPTIONS                                                                             \
    "  --coordinator EP  the coordinator's control socket (default $TANDEM_COORDINATOR,\n"         \
    "                    else " DEFAULT_CONTROL ")\n"                                              \
    "  --insecure        no CURVE (the coordinator runs with --insecure)\n"                        \
    "  --json            machine-readable output\n"                                                \
    "  -h, --help        this text\n"

static void submit_help(FILE *f) {
    fprintf(f, "usage: tandem submit JOB.json|PIPELINE.json [--ranks N] [--priority P]\n"
               "                    [--limit S] [--max-restarts N] [client options]\n"
               "\n"
               "Queues a job with the coordinator and prints its id. The file's section names\n"
               "the command: \"prep\", \"serve\", \"finetune\", or \"model\" (train); a\n"
               "\"pipeline\" file lists stages, each a job file of its own, that wait for and\n"
               "take inputs from earlier ones, and prints one id per stage (ranks, priority,\n"
               "limit and restarts are then each stage's, and --priority is added to theirs).\n"
               "Jobs run in the directory submit was called from (relative paths in job files\n"
               "resolve there; a pipeline's job files are found next to it). See\n"
               "docs/coordinator.md.\n"
               "\n"
               "  --ranks N         ranks, started all together (default 1)\n"
               "  --priority P      higher runs first; may preempt lower (default 0)\n"
               "  --limit S         the longest it may run, seconds (lets smaller jobs start\n"
               "                    ahead of a waiting one without delaying it)\n"
               "  --max-restarts N  restarts after a failure, from its last checkpoint\n"
               "                    (default 0)\n" CLIENT_OPTIONS);
}

typedef struct {
    long ranks, priority, limit, restarts;
    int bad;
} submit_u;

static int submit_extra(int c, void *u) {
    submit_u *s = u;
    const char *name = c == 'r'   ? "--ranks"
                       : c == 'p' ? "--priority"
                       : c == 'l' ? "--limit"
                                  : "--max-restarts";
    long lo = c == 'p' ? -1000000 : c == 'r' ? 1 : 0, hi = c == 'p' ? 1000000 : 1L << 30;
    long *dst = c == 'r'   ? &s->ranks
                : c == 'p' ? &s->priority
                : c == 'l' ? &s->limit
                           : &s->restarts;
    if (!td_cli_long(optarg, lo, hi, dst)) {
        fprintf(stderr, "tandem submit: %s %s: a whole number, %ld..%ld\n", name, optarg, lo, hi);
        return 2;
    }
    return 0;
}

int td_cmd_submit(int argc, char **argv) {
    static const struct option extra[] = {{"ranks", required_argument, 0, 'r'},
                                          {"priority", required_argument, 0, 'p'},
                                          {"limit", required_argument, 0, 'l'},
                                          {"max-restarts", required_argument, 0, 'm'},
                                          {0, 0, 0, 0}};
    client_opts co = {0};
    submit_u u = {.ranks = 1};
    int rc = client_args("submit", argc, argv, &co, extra, submit_extra, &u, submit_help);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind != argc - 1) {
        fprintf(stderr, "tandem submit: name one job file\n");
        submit_help(stderr);
        return 2;
    }
    char file[PATH_MAX], dir[PATH_MAX];
    if (!realpath(argv[optind], file)) {
        fprintf(stderr, "tandem submit: %s: %s\n", argv[optind], strerror(errno));
        return 2;
    }
    if (!getcwd(dir, sizeof dir)) {
        fprintf(stderr, "tandem submit: cannot read the current directory: %s\n", strerror(errno));
        return 1;
    }
    cJSON *doc = NULL;
    td_status s = td_json_load_file(file, &doc);
    if (s != TD_OK) return td_cli_fail("submit", s);
    const char *kind = td_stage_kind(doc);
    cJSON_Delete(doc);
    if (!kind) {
        fprintf(stderr,
                "tandem submit: %s: not a job file (a JSON object with a \"pipeline\", "
                "\"prep\", \"serve\", \"finetune\" or \"model\" section; docs/coordinator.md)\n",
                file);
        return 2;
    }
    Tandem__JobSubmit m = TANDEM__JOB_SUBMIT__INIT;
    m.kind = (char *)kind;
    m.file = file;
    m.dir = dir;
    m.ranks = (uint32_t)u.ranks;
    m.has_priority = 1, m.priority = (int32_t)u.priority;
    m.has_limit_s = 1, m.limit_s = (double)u.limit;
    m.has_max_restarts = 1, m.max_restarts = (uint32_t)u.restarts;
    td_env req = TANDEM__ENVELOPE__INIT, *rep;
    req.body_case = TANDEM__ENVELOPE__BODY_JOB_SUBMIT;
    req.job_submit = &m;
    s = ask(&co, &req, &rep);
    if (s != TD_OK) return td_cli_fail("submit", s);
    const Tandem__ControlReply *r = rep->control_reply;
    if (r->n_ids > 0) { /* a pipeline: one job per stage */
        printf(co.json ? "{\"ids\": [" : "");
        for (size_t i = 0; i < r->n_ids; i++)
            printf("%s%llu", i ? (co.json ? ", " : " ") : "", (unsigned long long)r->ids[i]);
        printf(co.json ? "]}\n" : "\n");
    } else if (co.json) {
        printf("{\"id\": %llu}\n", (unsigned long long)r->id);
    } else {
        printf("%llu\n", (unsigned long long)r->id);
    }
    td_wire_free(rep);
    return 0;
}

static void cancel_help(FILE *f) {
    fprintf(f, "usage: tandem cancel ID [client options]\n"
               "\n"
               "Cancels a job: a queued one at once; a running one gets SIGTERM on every rank\n"
               "(training writes a checkpoint and exits), then SIGKILL after the coordinator's\n"
               "--cancel-grace.\n"
               "\n" CLIENT_OPTIONS);
}

int td_cmd_cancel(int argc, char **argv) {
    client_opts co = {0};
    int rc = client_args("cancel", argc, argv, &co, NULL, NULL, NULL, cancel_help);
    if (rc) return rc < 0 ? 0 : rc;
    long id;
    if (optind != argc - 1 || !td_cli_long(argv[optind], 1, LONG_MAX, &id)) {
        fprintf(stderr, "tandem cancel: name one job id (a number from tandem ps)\n");
        return 2;
    }
    Tandem__JobCancel m = TANDEM__JOB_CANCEL__INIT;
    m.id = (uint64_t)id;
    td_env req = TANDEM__ENVELOPE__INIT, *rep;
    req.body_case = TANDEM__ENVELOPE__BODY_JOB_CANCEL;
    req.job_cancel = &m;
    td_status s = ask(&co, &req, &rep);
    if (s != TD_OK) return td_cli_fail("cancel", s);
    if (!co.json)
        printf("job %ld: cancel sent\n", id);
    else
        printf("{\"id\": %ld, \"cancel\": true}\n", id);
    td_wire_free(rep);
    return 0;
}

static void ps_help(FILE *f) {
    fprintf(f, "usage: tandem ps [client options]\n"
               "\n"
               "The coordinator's jobs, oldest first: id, state, kind, ranks, attempt, how long\n"
               "ago it started or how long it ran, and its job file; --json gives every field.\n"
               "\n" CLIENT_OPTIONS);
}

static void human_time(double s, char *out, size_t n) {
    if (s < 0) s = 0;
    if (s < 120)
        snprintf(out, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(out, n, "%.0fm", s / 60);
    else
        snprintf(out, n, "%.1fh", s / 3600);
}

int td_cmd_ps(int argc, char **argv) {
    client_opts co = {0};
    int rc = client_args("ps", argc, argv, &co, NULL, NULL, NULL, ps_help);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind != argc) {
        fprintf(stderr, "tandem ps: takes no arguments\n");
        return 2;
    }
    td_env *rep;
    td_status s = list_jobs(&co, &rep);
    if (s != TD_OK) return td_cli_fail("ps", s);
    const Tandem__ControlReply *r = rep->control_reply;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double now = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    if (co.json) {
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; i < r->n_jobs; i++) {
            const Tandem__JobInfo *j = r->jobs[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "id", (double)j->id);
            cJSON_AddStringToObject(o, "state", j->state);
            cJSON_AddStringToObject(o, "kind", j->kind);
            cJSON_AddNumberToObject(o, "ranks", j->ranks);
            cJSON_AddNumberToObject(o, "priority", j->priority);
            cJSON_AddNumberToObject(o, "attempt", j->attempt);
            cJSON_AddStringToObject(o, "file", j->file);
            cJSON_AddStringToObject(o, "hosts", j->hosts ? j->hosts : "");
            cJSON_AddNumberToObject(o, "submitted_at", j->submitted_at);
            if (j->has_started_at) cJSON_AddNumberToObject(o, "started_at", j->started_at);
            if (j->has_ended_at) cJSON_AddNumberToObject(o, "ended_at", j->ended_at);
            if (j->has_rc) cJSON_AddNumberToObject(o, "rc", j->rc);
            if (j->has_pid) cJSON_AddNumberToObject(o, "pid", (double)j->pid);
            cJSON_AddBoolToObject(o, "cancel_asked", j->cancel_asked);
            cJSON_AddStringToObject(o, "dir", j->dir ? j->dir : "");
            cJSON_AddNumberToObject(o, "max_restarts", j->max_restarts);
            cJSON_AddNumberToObject(o, "restarts", j->restarts);
            cJSON_AddNumberToObject(o, "limit_s", j->limit_s);
            cJSON_AddStringToObject(o, "log", j->log ? j->log : "");
            cJSON_AddStringToObject(o, "reason", j->reason ? j->reason : "");
            if (j->pipeline) cJSON_AddStringToObject(o, "pipeline", j->pipeline);
            if (j->stage) cJSON_AddStringToObject(o, "stage", j->stage);
            cJSON *after = cJSON_AddArrayToObject(o, "after");
            for (size_t k = 0; k < j->n_after; k++)
                cJSON_AddItemToArray(after, cJSON_CreateNumber((double)j->after[k]));
            if (j->models) cJSON_AddStringToObject(o, "models", j->models);
            if (j->run_file) cJSON_AddStringToObject(o, "run_file", j->run_file);
            if (j->has_replicas) {
                cJSON_AddNumberToObject(o, "replicas", j->replicas);
                cJSON_AddNumberToObject(o, "pool_min", j->pool_min);
                cJSON_AddNumberToObject(o, "pool_max", j->pool_max);
                cJSON_AddNumberToObject(o, "pool_want", j->pool_want);
            }
            cJSON_AddItemToArray(arr, o);
        }
        char *t = cJSON_PrintUnformatted(arr);
        printf("%s\n", t ? t : "[]");
        free(t);
        cJSON_Delete(arr);
    } else {
        printf("%-5s %-10s %-9s %5s %7s %8s  %s\n", "ID", "STATE", "KIND", "RANKS", "ATTEMPT",
               "TIME", "FILE OR PIPELINE/STAGE");
        for (size_t i = 0; i < r->n_jobs; i++) {
            const Tandem__JobInfo *j = r->jobs[i];
            char t[32] = "-";
            if ((!strcmp(j->state, "running") || !strcmp(j->state, "serving")) && j->has_started_at)
                human_time(now - j->started_at, t, sizeof t);
            else if (j->has_ended_at && j->has_started_at)
                human_time(j->ended_at - j->started_at, t, sizeof t);
            char state[24];
            snprintf(state, sizeof state, "%s%s", j->state,
                     j->cancel_asked && !strcmp(j->state, "running") ? "*" : "");
            char what[1200], pool[64] = "";
            if (j->has_replicas)
                snprintf(pool, sizeof pool, "  replicas %u (min %u, max %u)", j->replicas,
                         j->pool_min, j->pool_max);
            if (j->stage)
                snprintf(what, sizeof what, "%s/%s%s%s%s", j->pipeline ? j->pipeline : "", j->stage,
                         j->models ? "  models " : "", j->models ? j->models : "", pool);
            else
                snprintf(what, sizeof what, "%s%s%s%s", j->file, j->models ? "  models " : "",
                         j->models ? j->models : "", pool);
            printf("%-5llu %-10s %-9s %5u %7u %8s  %s\n", (unsigned long long)j->id, state, j->kind,
                   j->ranks, j->attempt, t, what);
        }
        printf("(%u slot%s)\n", r->slots, r->slots == 1 ? "" : "s");
    }
    td_wire_free(rep);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static void pool_help(FILE *f) {
    fprintf(f, "usage: tandem pool [client options]\n"
               "\n"
               "The coordinator's hosts: slots, how many are held and free, whether the host is\n"
               "draining (tandem drain), and which running jobs hold its slots.\n"
               "\n" CLIENT_OPTIONS);
}

/* Slots a running job holds on host h, from its "host:N,host:N" placement. */
static unsigned held_on(const Tandem__JobInfo *j, const char *h) {
    if (j->has_replicas) return strcmp(h, "localhost") ? 0 : j->replicas * j->ranks;
    unsigned n = 0;
    const char *p = j->hosts ? j->hosts : "";
    size_t hl = strlen(h);
    while (*p) {
        if (!strncmp(p, h, hl) && p[hl] == ':') n += (unsigned)strtoul(p + hl + 1, NULL, 10);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    return n;
}

int td_cmd_pool(int argc, char **argv) {
    client_opts co = {0};
    int rc = client_args("pool", argc, argv, &co, NULL, NULL, NULL, pool_help);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind != argc) {
        fprintf(stderr, "tandem pool: takes no arguments\n");
        return 2;
    }
    td_env *rep;
    td_status s = list_jobs(&co, &rep);
    if (s != TD_OK) return td_cli_fail("pool", s);
    const Tandem__ControlReply *r = rep->control_reply;
    cJSON *arr = cJSON_CreateArray();
    if (!co.json)
        printf("%-20s %5s %5s %5s  %-9s %s\n", "HOST", "SLOTS", "HELD", "FREE", "STATE", "HELD BY");
    for (size_t h = 0; h < r->n_hosts; h++) {
        const char *name = r->hosts[h];
        unsigned slots = h < r->n_host_slots ? r->host_slots[h] : 0, held = 0;
        int draining = 0;
        for (size_t k = 0; k < r->n_draining; k++)
            draining |= !strcmp(r->draining[k], name);
        char by[2048] = "";
        size_t len = 0;
        cJSON *o = cJSON_CreateObject(), *holders = cJSON_CreateArray();
        for (size_t i = 0; i < r->n_jobs; i++) {
            const Tandem__JobInfo *j = r->jobs[i];
            if (strcmp(j->state, "running") && strcmp(j->state, "serving")) continue;
            unsigned n = held_on(j, name);
            if (!n) continue;
            held += n;
            if (len < sizeof by - 64)
                len += (size_t)snprintf(by + len, sizeof by - len, "%sjob %llu (%s) %u",
                                        len ? ", " : "", (unsigned long long)j->id, j->kind, n);
            cJSON *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "id", (double)j->id);
            cJSON_AddStringToObject(x, "kind", j->kind);
            cJSON_AddNumberToObject(x, "slots", n);
            cJSON_AddItemToArray(holders, x);
        }
        cJSON_AddStringToObject(o, "host", name);
        cJSON_AddNumberToObject(o, "slots", slots);
        cJSON_AddNumberToObject(o, "held", held);
        cJSON_AddNumberToObject(o, "free", held < slots ? slots - held : 0);
        cJSON_AddBoolToObject(o, "draining", draining);
        cJSON_AddItemToObject(o, "held_by", holders);
        cJSON_AddItemToArray(arr, o);
        if (!co.json)
            printf("%-20s %5u %5u %5u  %-9s %s\n", name, slots, held,
                   held < slots ? slots - held : 0, draining ? "draining" : "open",
                   by[0] ? by : "-");
    }
    if (co.json) {
        char *t = cJSON_PrintUnformatted(arr);
        printf("%s\n", t ? t : "[]");
        free(t);
    }
    cJSON_Delete(arr);
    td_wire_free(rep);
    return 0;
}

static void drain_help(FILE *f) {
    fprintf(f, "usage: tandem drain HOST [--undo] [client options]\n"
               "\n"
               "Places nothing new on HOST: what runs there keeps running; queued jobs wait\n"
               "for other hosts. --undo opens it again. The state is journaled, so it\n"
               "survives a restart of the coordinator. tandem pool shows it.\n"
               "\n"
               "  --undo            open the host again\n" CLIENT_OPTIONS);
}

static int undo_flag;
static int drain_extra(int c, void *u) {
    (void)u;
    if (c != 'u') return 2;
    undo_flag = 1;
    return 0;
}

int td_cmd_drain(int argc, char **argv) {
    static const struct option extra[] = {{"undo", no_argument, 0, 'u'}, {0, 0, 0, 0}};
    client_opts co = {0};
    undo_flag = 0;
    int rc = client_args("drain", argc, argv, &co, extra, drain_extra, NULL, drain_help);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind != argc - 1) {
        fprintf(stderr, "tandem drain: name one host (tandem pool lists them)\n");
        return 2;
    }
    Tandem__HostDrain m = TANDEM__HOST_DRAIN__INIT;
    m.host = argv[optind];
    m.has_undo = 1, m.undo = undo_flag;
    td_env req = TANDEM__ENVELOPE__INIT, *rep;
    req.body_case = TANDEM__ENVELOPE__BODY_HOST_DRAIN;
    req.host_drain = &m;
    td_status s = ask(&co, &req, &rep);
    if (s != TD_OK) return td_cli_fail("drain", s);
    if (co.json)
        printf("{\"host\": \"%s\", \"draining\": %s}\n", m.host, undo_flag ? "false" : "true");
    else
        printf("host %s: %s\n", m.host,
               undo_flag ? "open again" : "draining (nothing new is placed there)");
    td_wire_free(rep);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

static void logs_help(FILE *f) {
    fprintf(
        f, "usage: tandem logs ID [-f] [client options]\n"
           "\n"
           "Prints a job's output (every attempt's, each headed by the mpirun line that ran\n"
           "it); with -f, follows it until the job ends. The coordinator names the file\n"
           "(STATE/jobs/ID/log), which is read on this machine.\n"
           "\n"
           "  -f, --follow      keep printing what is written until the job ends\n" CLIENT_OPTIONS);
}

/* The job's state, log file and the reason it ended from the coordinator; 0 when found.
 * With quiet, a coordinator that does not answer is not reported (-1). */
static int job_info(const client_opts *co, long id, char *state, size_t sn, char *log, size_t ln,
                    char *reason, size_t rn, int quiet) {
    td_env *rep;
    td_status s = list_jobs(co, &rep);
    if (s != TD_OK && quiet) {
        td_error_clear();
        return -1;
    }
    if (s != TD_OK) return td_cli_fail("logs", s);
    int rc = 2;
    for (size_t i = 0; i < rep->control_reply->n_jobs; i++) {
        const Tandem__JobInfo *j = rep->control_reply->jobs[i];
        if ((long)j->id != id) continue;
        snprintf(state, sn, "%s", j->state);
        snprintf(log, ln, "%s", j->log ? j->log : "");
        snprintf(reason, rn, "%s", j->reason ? j->reason : "");
        rc = 0;
    }
    td_wire_free(rep);
    if (rc) fprintf(stderr, "tandem logs: error: no job %ld\n", id);
    return rc;
}

static int follow_flag;
static int logs_extra(int c, void *u) {
    (void)u;
    if (c != 'f') return 2;
    follow_flag = 1;
    return 0;
}

int td_cmd_logs(int argc, char **argv) {
    static const struct option extra[] = {{"follow", no_argument, 0, 'f'}, {0, 0, 0, 0}};
    client_opts co = {0};
    follow_flag = 0;
    /* -f as a short option: getopt_long's string is fixed in client_args, so map it here */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-f")) argv[i] = "--follow";
    int rc = client_args("logs", argc, argv, &co, extra, logs_extra, NULL, logs_help);
    if (rc) return rc < 0 ? 0 : rc;
    long id;
    if (optind != argc - 1 || !td_cli_long(argv[optind], 1, LONG_MAX, &id)) {
        fprintf(stderr, "tandem logs: name one job id (a number from tandem ps)\n");
        return 2;
    }
    char state[32], path[1300], reason[256];
    if ((rc = job_info(&co, id, state, sizeof state, path, sizeof path, reason, sizeof reason,
                       0)) != 0)
        return rc;
    int unanswered = 0; /* rounds the coordinator did not answer (it may be restarting) */
    FILE *f = NULL;
    char buf[65536];
    for (int quiet_rounds = 0;;) {
        if (!f) f = fopen(path, "r");
        size_t n = 0, got = 0;
        while (f && (n = fread(buf, 1, sizeof buf, f)) > 0) {
            fwrite(buf, 1, n, stdout);
            got += n;
        }
        fflush(stdout);
        if (f) clearerr(f);
        if (!follow_flag) break;
        if (!strcmp(state, "done") || !strcmp(state, "failed") || !strcmp(state, "cancelled")) {
            if (!got) break; /* ended, and everything it wrote is out */
            continue;
        }
        usleep(200000);
        if (++quiet_rounds % 5 == 0) {
            rc =
                job_info(&co, id, state, sizeof state, path, sizeof path, reason, sizeof reason, 1);
            if (rc < 0 && ++unanswered <= 12) { /* a minute: the log file is here meanwhile */
                if (unanswered == 1)
                    fprintf(stderr,
                            "tandem logs: the coordinator does not answer; still "
                            "following %s\n",
                            path);
                rc = 0;
                continue;
            }
            if (rc < 0)
                rc = job_info(&co, id, state, sizeof state, path, sizeof path, reason,
                              sizeof reason, 0);
            if (rc) break;
            unanswered = 0;
        }
    }
    if (!f && !follow_flag) {
        if (!strcmp(state, "done") || !strcmp(state, "failed") || !strcmp(state, "cancelled"))
            printf("(job %ld wrote nothing: %s%s%s)\n", id, state, reason[0] ? ", " : "", reason);
        else
            printf("(job %ld has written nothing yet: %s)\n", id, state);
    }
    if (f) fclose(f);
    return rc;
}
