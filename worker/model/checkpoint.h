/* Checkpoints: a directory per saved step, in the layout Hugging Face tools read.
 *
 *   ROOT/step_00000100/
 *     config.json            Hugging Face config (td_model_config_to_hf_json)
 *     model.safetensors      weights under Hugging Face names and layouts
 *     optimizer.safetensors  AdamW moments: "<name>.exp_avg", "<name>.exp_avg_sq"
 *     trainer_state.json     step, RNG, data position, lineage (written by the trainer)
 *     tokenizer.json         Hugging Face tokenizer
 *     SHA256SUMS             sha256 of each file above (`sha256sum -c SHA256SUMS` checks it)
 *
 * A checkpoint is written under ROOT/.tmp-step_... and renamed into place only when every
 * file is complete, so a crash never leaves a directory that looks whole. Loading checks
 * every tensor's name, dtype and shape and names the first problem it finds. */
#ifndef TD_CHECKPOINT_H
#define TD_CHECKPOINT_H

#include <cjson/cJSON.h>

#include "common/status.h"
#include "worker/model/model.h"

typedef struct {
    const char *root; /* run directory; created if missing */
    long step;
    const td_model *model;
    const float *adam_m; /* num_params each, or NULL to skip optimizer.safetensors */
    const float *adam_v;
    const cJSON *trainer_state; /* written as trainer_state.json; borrowed */
    const char *tokenizer_json; /* contents of tokenizer.json, or NULL for none */
    int keep;                   /* keep the newest `keep` checkpoints (0 = all) */
    /* an adapter checkpoint: adapter_config.json and adapter_model.safetensors (PEFT's
     * files) instead of config.json and model.safetensors; adam_m/adam_v then hold the
     * adapter's moments. base: the base checkpoint, recorded in adapter_config.json */
    const struct td_lora *lora;
    const char *base;
    /* not NULL: write exactly this directory (which must not exist) instead of
     * ROOT/step_NNNNNNNN; root and keep are then unused */
    const char *dir;
} td_checkpoint_save_args;

/* The chat template tandem writes into tokenizer_config.json ("chat_template", the Jinja
 * form Hugging Face's apply_chat_template runs) and formats chat prompts with: ChatML. */
extern const char td_chatml_template[];

/* Writes the checkpoint; on success `out_dir` (if not NULL) receives its path. With a
 * tokenizer, tokenizer_config.json (eos token, context length, chat template) goes too. */
td_status td_checkpoint_save(const td_checkpoint_save_args *a, char *out_dir, size_t out_len);

/* Loads config.json and model.safetensors of checkpoint `dir` into a new model
 * (*out owned by the caller). */
td_status td_checkpoint_load_model(const char *dir, td_model **out);

/* Reads, for each of `nsets` (suffix, base) pairs, the tensors named "<tensor name><suffix>"
 * for every model tensor of a safetensors file into base (num_params floats, the model's
 * internal layout). Fails, naming the tensor, on a missing, mis-shaped or non-float tensor,
 * and on unexpected tensors. */
td_status td_checkpoint_read_tensors(const td_model *m, const char *path, int nsets,
                                     const char *const *suffixes, float *const *bases);

/* Checks every file SHA256SUMS in `dir` lists against its sha256: TD_ERR_FORMAT naming the
 * first file that differs or is missing. A checkpoint without SHA256SUMS (older, or made by
 * another tool) passes with *verified = 0; otherwise *verified = the files checked. */
td_status td_checkpoint_verify(const char *dir, int *verified);

/* td_checkpoint_verify for a command that loads `dir`, saying in the log what was checked:
 * skip (the user's --no-verify) logs that nothing was. */
td_status td_checkpoint_check(const char *dir, int skip);

/* The sha256 of `file` in checkpoint `dir` (hex): from SHA256SUMS where it lists the file,
 * else computed. */
td_status td_checkpoint_file_sha256(const char *dir, const char *file, char hex[65]);
/* The lineage of checkpoint `dir` (a new cJSON array, the caller's): the ancestors its
 * trainer_state.json lists, oldest first, then an entry for `dir` itself -- absolute path,
 * step, produced_by, method, the sha256 of its weights file (model.safetensors, or
 * adapter_model.safetensors for an adapter) and its data. A checkpoint without
 * trainer_state.json is an entry with its path and weights only. */
cJSON *td_checkpoint_lineage(const char *dir);
/* Finds the newest complete checkpoint under `root`; TD_ERR_NOTFOUND when there is none. */
td_status td_checkpoint_latest(const char *root, char *out, size_t out_len);

#endif
