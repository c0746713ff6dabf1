/* Model configuration: the architecture and its sizes, read from the `model` block of a job
 * file or from a checkpoint's config.json (Hugging Face key names), validated, and written
 * back as a config.json that `transformers` loads. */
#ifndef TD_MODEL_CONFIG_H
#define TD_MODEL_CONFIG_H

#include <cjson/cJSON.h>

#include "common/status.h"

typedef enum { TD_ARCH_LLAMA = 0, TD_ARCH_GPT2 = 1 } td_arch;

typedef struct {
    td_arch arch;
    int hidden_size;             /* C */
    int intermediate_size;       /* F (llama: SwiGLU width; gpt2: 4C unless set) */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* NH */
    int num_key_value_heads;     /* NKV (gpt2: = NH) */
    int vocab_size;              /* V */
    int max_position_embeddings; /* longest sequence */
    double norm_eps;             /* rms_norm_eps (llama) or layer_norm_epsilon (gpt2) */
    double rope_theta;           /* llama only */
    int tie_word_embeddings;     /* llama: optional; gpt2: always tied */
    int tp_size;                 /* >1: this is one tensor-parallel slice; heads and
                                  * intermediate_size above are the slice's (not in JSON) */
} td_model_config;

const char *td_arch_name(td_arch a);

/* Fills *cfg from a JSON object in either form (job-file `model` block or Hugging Face
 * config.json, including GPT-2's n_embd/n_layer/n_head/n_positions keys); `where` labels
 * error messages ("job.json: model"). Validates with td_model_config_validate. */
td_status td_model_config_from_json(const cJSON *obj, const char *where, td_model_config *cfg);
td_status td_model_config_validate(const td_model_config *cfg, const char *where);

/* A new cJSON object in Hugging Face config.json form; the caller owns it. */
cJSON *td_model_config_to_hf_json(const td_model_config *cfg);

/* Head dimension C / NH. */
static inline int td_model_config_head_dim(const td_model_config *c) {
    return c->hidden_size / (c->num_attention_heads * (c->tp_size > 1 ? c->tp_size : 1));
}

#endif
