/* Subcommand entry points of the `tandem` binary. Each returns a process exit code
 * (0 ok, 1 runtime failure, 2 bad usage or input) and prints its own --help. */
#ifndef TD_CLI_H
#define TD_CLI_H

int td_cmd_train(int argc, char **argv);
int td_cmd_finetune(int argc, char **argv);
int td_cmd_distill(int argc, char **argv);
int td_cmd_synthesize(int argc, char **argv);
int td_cmd_select(int argc, char **argv);
int td_cmd_merge(int argc, char **argv);
int td_cmd_show(int argc, char **argv);
int td_cmd_eval(int argc, char **argv);
int td_cmd_generate(int argc, char **argv);
int td_cmd_prep(int argc, char **argv);

int td_cmd_serve(int argc, char **argv);
int td_cmd_router(int argc, char **argv);
int td_cmd_gateway(int argc, char **argv);

int td_cmd_coordinator(int argc, char **argv);
int td_cmd_submit(int argc, char **argv);
int td_cmd_ps(int argc, char **argv);
int td_cmd_cancel(int argc, char **argv);
int td_cmd_logs(int argc, char **argv);
int td_cmd_pool(int argc, char **argv);
int td_cmd_drain(int argc, char **argv);

/* SIGINT and SIGTERM set *flag (a process-wide flag) instead of killing; SIGPIPE ignored. */
void td_cli_catch_stop_signals(volatile int **flag);

struct td_model;
/* serve's option parsing and run, shared with train --serve (given: a model in memory,
 * taken; tok_json: its tokenizer.json text; both NULL to load --model). Finalizes MPI. */
int td_serve_main(int argc, char **argv, const char *cmd, struct td_model *given,
                  const char *tok_json);

/* Prints "tandem CMD: error: <message>" for the recorded error and returns its exit code.
 * Under a launcher (mpirun, srun), ranks other than 0 pause 2 s first and prefix their rank:
 * an error every rank meets is then printed once, by rank 0, whose abort ends the others. */
int td_cli_fail(const char *cmd, int status);
/* For an error found before MPI starts that every rank finds alike (the job file): printed
 * by rank 0 only. */
int td_cli_fail_same_on_all_ranks(const char *cmd, int status);
/* This process's rank from the launcher's environment, before MPI starts (-1: none). */
int td_cli_launcher_rank(void);
/* Option values: s as a whole decimal integer, or as a number, in [lo, hi]; trailing text,
 * overflow and NaN are refused (0) rather than wrapped or ignored. */
int td_cli_long(const char *s, long lo, long hi, long *out);
int td_cli_double(const char *s, double lo, double hi, double *out);

struct td_comm;
/* Collective over comm (NULL: this process alone): gathers each rank's OpenBLAS core and
 * has rank 0 log the kernels line, and warn where ranks differ (td_cpu_kernels_log). */
void td_cli_log_kernels(struct td_comm *comm, int quiet);

#include "worker/infer/runtime.h"
/* td_serve with this process's control plane for --http (the router and gateway in
 * threads, serve_http.c) and, when serving online, SIGINT/SIGTERM ending it cleanly. Takes
 * full, like td_serve. */
td_status td_cli_serve(td_model *full, td_bpe *tok, td_comm *world, td_serve_opts *o);
/* tandem prep --chat (cli/cmd_prep_chat.c), collective over w: files[k] tokenized into split
 * names[k] of out_dir with the tokenizer.json at `tokenizer` (or in that checkpoint
 * directory). */
td_status td_prep_chat(td_comm *w, const char *tokenizer, const char *out_dir,
                       const char *const *names, const char *const *files, int n, int quiet);

#endif
