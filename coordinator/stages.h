/* Job files and pipelines as the coordinator sees them (docs/coordinator.md, "Job files" and
 * "Pipelines"): which of tandem's commands a file describes, the command line the coordinator
 * builds for it from a fixed table of that command's options (never a command line taken
 * from a request), the output a finished stage hands to the next one, and a pipeline's
 * stages with their references. No processes, no sockets: tests/unit/test_stages.c. */
#ifndef TD_STAGES_H
#define TD_STAGES_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "common/status.h"

#define TD_PIPELINE_MAX_STAGES 16
#define TD_STAGE_MAX_INPUTS 8

/* The kind of a job file from its sections: "pipeline", "prep", "serve", "finetune",
 * "distill", "bench" or "train" (a "model" section); NULL when it is none of these. */
const char *td_stage_kind(const cJSON *doc);

/* 1 when the coordinator runs jobs of this kind (prep, train, finetune, serve). */
int td_stage_runs(const char *kind);

/* Checks that an input of a `kind` stage may set `key` to the output of a `from` stage:
 * prep.tokenizer, finetune.base and serve.model take a train or finetune stage's
 * checkpoint; data.train and data.val (train, finetune) a prep stage's output;
 * serve.adapters.NAME a finetune stage's adapter. */
td_status td_stage_check_input(const char *kind, const char *key, const char *from);

/* Checks a job file: one command section only; for prep and serve the section's keys,
 * each of its type, the required ones present (a train or finetune file's keys are
 * checked by its command when it runs). */
td_status td_stage_check(const char *kind, const cJSON *doc, const char *where);

/* The arguments after the tandem binary: the command, then its options. */
typedef struct {
    char **v; /* NULL-terminated, owned */
    int n;
    size_t cap;
} td_argv;
void td_argv_free(td_argv *a);

/* What the coordinator adds to a stage's command line. */
typedef struct {
    const char *router_back; /* serve: the hosted router's replica endpoint */
    int insecure;            /* serve: --insecure (the router runs in plain text) */
    int resume;              /* train, finetune: --resume */
} td_stage_env;

/* The command line of a stage: train and finetune run their (effective) job file; prep and
 * serve get one option per key of their section. */
td_status td_stage_argv(const char *kind, const char *file, const cJSON *doc,
                        const td_stage_env *env, td_argv *out);

/* Sets the dotted key ("serve.adapters.reverse") of doc to a string, making the objects on
 * the way; a key that crosses a value that is not an object is an error. */
td_status td_stage_set(cJSON *doc, const char *key, const char *value);

/* What a finished stage hands on, as an absolute path (dir: the directory it ran in): prep
 * its output directory (prep.out); train and finetune their newest checkpoint (the highest
 * step_* of checkpoint.dir, default runs/default). Other kinds hand nothing on. */
td_status td_stage_output(const char *kind, const cJSON *doc, const char *dir, char *out, size_t n);

/* The model names a serve stage answers to, comma-separated: its name (default: the model
 * directory's name, its parent's for a step_* directory) and each adapter's. */
void td_stage_serve_names(const cJSON *doc, char *out, size_t n);

/* A pipeline file: {"pipeline": {"name": ..., "stages": [...]}}. Each stage: name, job (a
 * job file, relative to the pipeline file), ranks, priority, max_restarts, limit_s, inputs
 * ({"dotted.key": "earlier stage"}) and after (["earlier stage", ...]); a stage waits for
 * every stage it names. */
typedef struct {
    char name[64];
    char job[1024]; /* absolute */
    char kind[16];
    int ranks, priority, max_restarts;
    double limit_s;
    int n_after, after[TD_PIPELINE_MAX_STAGES]; /* indexes of earlier stages */
    int n_inputs;
    char input_key[TD_STAGE_MAX_INPUTS][128];
    int input_from[TD_STAGE_MAX_INPUTS]; /* index of an earlier stage */
} td_stage_spec;

typedef struct {
    char name[64];
    int n;
    td_stage_spec stage[TD_PIPELINE_MAX_STAGES];
} td_pipeline;

/* Reads and checks a pipeline file and every job file it names (stage names unique, the
 * references to earlier stages that hand something on, ranks within slots). */
td_status td_pipeline_load(const char *file, int slots, td_pipeline *out);

#endif
