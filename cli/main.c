/* `tandem`: one binary, subcommands dispatched by name (docs/architecture.md, "Processes and
 * roles"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/status.h"
#include "worker/comm/comm.h"
#include "worker/kernels/cpu/blas_core.h"

#define TD_VERSION "0.1.0"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command g_cmds[] = {
    {"prep", td_cmd_prep, "clean, deduplicate and tokenize text into shards (BPE; mpirun)"},
    {"train", td_cmd_train, "train a model from a job file (alone or data-parallel; mpirun)"},
    {"finetune", td_cmd_finetune, "fine-tune a checkpoint on conversations (full or LoRA; mpirun)"},
    {"distill", td_cmd_distill, "train a student on a teacher's logits (mpirun)"},
    {"synthesize", td_cmd_synthesize, "a teacher's checked answers to prompts, as chat data"},
    {"select", td_cmd_select, "a smaller corpus: documents chosen by a model's loss"},
    {"merge", td_cmd_merge, "fold a LoRA adapter into its base: a full checkpoint"},
    {"show", td_cmd_show, "describe a checkpoint or adapter and its lineage"},
    {"eval", td_cmd_eval, "a checkpoint's loss on token shards (e.g. before/after fine-tuning)"},
    {"generate", td_cmd_generate, "sample text from a checkpoint (one prompt or a file)"},
    {"serve", td_cmd_serve, "serve a checkpoint (tensor-parallel replicas; router, HTTP)"},
    {"router", td_cmd_router, "route requests to serving replicas (ZeroMQ)"},
    {"gateway", td_cmd_gateway, "HTTP front door: OpenAI and Ollama APIs, /metrics"},
    {"coordinator", td_cmd_coordinator,
     "the daemon: job queue, pipelines, gang scheduling, restarts, serving pools, gateway"},
    {"submit", td_cmd_submit, "queue a job or a pipeline with the coordinator"},
    {"ps", td_cmd_ps, "the coordinator's jobs and their states"},
    {"cancel", td_cmd_cancel, "cancel a queued or running job"},
    {"logs", td_cmd_logs, "a job's output (-f: follow it)"},
    {"pool", td_cmd_pool, "the coordinator's hosts: slots, who holds them, draining"},
    {"drain", td_cmd_drain, "place nothing new on a host (--undo: open it again)"},
};

int td_cli_launcher_rank(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return atoi(getenv(vars[i]));
    return -1;
}

int td_cli_long(const char *s, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

int td_cli_double(const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

int td_cli_fail(const char *cmd, int status) {
    int rank = td_cli_launcher_rank();
    if (rank > 0) {
        /* rank 0 speaks for the job: an error that every rank meets (bad input is the same
         * on all of them) is printed by rank 0, whose abort then ends this rank during the
         * pause; an error of this rank alone is still printed, after it */
        struct timespec pause = {2, 0};
        if (nanosleep(&pause, NULL) != 0) /* a signal: the job is being ended, rank 0 spoke */
            return td_status_exit_code(status);
        fprintf(stderr, "[rank %d] ", rank);
    }
    fprintf(stderr, "tandem %s: error: %s\n", cmd,
            td_error_message()[0] ? td_error_message() : td_status_to_string(status));
    return td_status_exit_code(status);
}

int td_cli_fail_same_on_all_ranks(const char *cmd, int status) {
    if (td_cli_launcher_rank() > 0) return td_status_exit_code(status);
    return td_cli_fail(cmd, status);
}

void td_cli_log_kernels(td_comm *comm, int quiet) {
    enum { STRIDE = 32 };
    int n = comm ? comm->size : 1, rank = comm ? comm->rank : 0;
    char *all = calloc((size_t)n, STRIDE);
    if (!all) return;
    snprintf(all + (size_t)rank * STRIDE, STRIDE, "%s", td_blas_core_name());
    if (n > 1 && td_comm_allgather(comm, all, STRIDE, TD_COMM_BYTE) != TD_OK) n = 1;
    td_cpu_kernels_log(all, STRIDE, n, quiet);
    free(all);
}

static void usage(FILE *f) {
    fprintf(f, "usage: tandem <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        fprintf(f, "  %-11s %s\n", g_cmds[i].name, g_cmds[i].summary);
    fprintf(f, "  %-11s %s\n  %-11s %s\n", "version", "print the version", "help CMD",
            "show a command's options");
    fprintf(f, "\nOther commands of the design (bench, export, ...) are not "
               "built yet.\n");
}

int main(int argc, char **argv) {
    /* first: may re-execute with the right OpenBLAS kernels for this CPU (blas_core.h) */
    td_blas_core_check(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        char kernels[512];
        printf("tandem %s\nkernels: %s\n", TD_VERSION,
               td_cpu_kernels_describe(kernels, sizeof kernels));
        return 0;
    }
    if (!strcmp(cmd, "help")) {
        if (argc < 3) {
            usage(stdout);
            return 0;
        }
        for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
            if (!strcmp(argv[2], g_cmds[i].name)) {
                char *args[] = {argv[2], "--help", NULL};
                return g_cmds[i].fn(2, args);
            }
        fprintf(stderr, "tandem: unknown command '%s'\n", argv[2]);
        return 2;
    }
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        if (!strcmp(cmd, g_cmds[i].name)) return g_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "tandem: unknown command '%s' (see tandem --help)\n", cmd);
    return 2;
}
