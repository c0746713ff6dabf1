/* Model configuration parsing, validation and config.json output (see config.h). */
#include "worker/model/config.h"

#include <stdio.h>
#include <string.h>

#include "common/json.h"

const char *td_arch_name(td_arch a) {
    return a == TD_ARCH_GPT2 ? "gpt2" : "llama";
}

static td_status get_int_any(const cJSON *obj, const char *where, const char *k1, const char *k2,
                             int required, int *out) {
    int64_t v = -1;
    TD_TRY(td_json_get_int(obj, where, k1, 0, &v));
    if (v == -1 && k2) TD_TRY(td_json_get_int(obj, where, k2, 0, &v));
    if (v == -1) {
        if (required)
            return td_error_set(TD_ERR_INVALID, "%s: missing required key \"%s\"", where, k1);
        return TD_OK;
    }
    if (v <= 0 || v > (1 << 30))
        return td_error_set(TD_ERR_INVALID, "%s.%s: must be a positive integer, got %lld", where,
                            k1, (long long)v);
    *out = (int)v;
    return TD_OK;
}

td_status td_model_config_from_json(const cJSON *obj, const char *where, td_model_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    if (!cJSON_IsObject(obj))
        return td_error_set(TD_ERR_INVALID, "%s: expected a JSON object", where);
    const char *arch = NULL;
    TD_TRY(td_json_get_string(obj, where, "arch", 0, &arch));
    if (!arch) TD_TRY(td_json_get_string(obj, where, "model_type", 0, &arch));
    if (!arch) {
        const cJSON *archs = cJSON_GetObjectItemCaseSensitive(obj, "architectures");
        const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
        if (cJSON_IsString(a0))
            arch = strstr(a0->valuestring, "GPT2")    ? "gpt2"
                   : strstr(a0->valuestring, "Llama") ? "llama"
                                                      : a0->valuestring;
    }
    if (!arch) arch = "llama";
    if (!strcmp(arch, "llama"))
        cfg->arch = TD_ARCH_LLAMA;
    else if (!strcmp(arch, "gpt2"))
        cfg->arch = TD_ARCH_GPT2;
    else
        return td_error_set(TD_ERR_INVALID,
                            "%s.arch: unknown architecture \"%s\" (known: llama, gpt2)", where,
                            arch);

    TD_TRY(get_int_any(obj, where, "hidden_size", "n_embd", 1, &cfg->hidden_size));
    TD_TRY(get_int_any(obj, where, "num_hidden_layers", "n_layer", 1, &cfg->num_hidden_layers));
    TD_TRY(get_int_any(obj, where, "num_attention_heads", "n_head", 1, &cfg->num_attention_heads));
    TD_TRY(get_int_any(obj, where, "vocab_size", NULL, 1, &cfg->vocab_size));
    TD_TRY(get_int_any(obj, where, "max_position_embeddings", "n_positions", 1,
                       &cfg->max_position_embeddings));
    cfg->num_key_value_heads = cfg->num_attention_heads;
    TD_TRY(get_int_any(obj, where, "num_key_value_heads", NULL, 0, &cfg->num_key_value_heads));
    if (cfg->arch == TD_ARCH_GPT2) {
        cfg->intermediate_size = 4 * cfg->hidden_size;
        TD_TRY(get_int_any(obj, where, "n_inner", "intermediate_size", 0, &cfg->intermediate_size));
        double eps = 1e-5;
        TD_TRY(td_json_get_double(obj, where, "layer_norm_epsilon", 0, &eps));
        cfg->norm_eps = eps;
        cfg->tie_word_embeddings = 1;
        int tie = 1;
        TD_TRY(td_json_get_bool(obj, where, "tie_word_embeddings", 0, &tie));
        if (!tie)
            return td_error_set(TD_ERR_INVALID,
                                "%s.tie_word_embeddings: gpt2 always ties its embeddings", where);
        const char *act = NULL;
        TD_TRY(td_json_get_string(obj, where, "activation_function", 0, &act));
        if (act && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
            return td_error_set(TD_ERR_INVALID,
                                "%s.activation_function: \"%s\" is not supported (gelu_new only)",
                                where, act);
    } else {
        TD_TRY(get_int_any(obj, where, "intermediate_size", NULL, 1, &cfg->intermediate_size));
        double eps = 1e-5, theta = 10000.0;
        TD_TRY(td_json_get_double(obj, where, "rms_norm_eps", 0, &eps));
        TD_TRY(td_json_get_double(obj, where, "rope_theta", 0, &theta));
        cfg->norm_eps = eps;
        cfg->rope_theta = theta;
        TD_TRY(td_json_get_bool(obj, where, "tie_word_embeddings", 0, &cfg->tie_word_embeddings));
        const char *act = NULL;
        TD_TRY(td_json_get_string(obj, where, "hidden_act", 0, &act));
        if (act && strcmp(act, "silu"))
            return td_error_set(TD_ERR_INVALID,
                                "%s.hidden_act: \"%s\" is not supported (silu only)", where, act);
        int64_t head_dim = -1;
        TD_TRY(td_json_get_int(obj, where, "head_dim", 0, &head_dim));
        if (head_dim != -1 && head_dim * cfg->num_attention_heads != cfg->hidden_size)
            return td_error_set(TD_ERR_INVALID,
                                "%s.head_dim: %lld x num_attention_heads %d != hidden_size %d "
                                "(only head_dim = hidden_size / heads is supported)",
                                where, (long long)head_dim, cfg->num_attention_heads,
                                cfg->hidden_size);
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(obj, "rope_scaling");
        if (rs && !cJSON_IsNull(rs))
            return td_error_set(TD_ERR_INVALID, "%s.rope_scaling: not supported", where);
    }
    return td_model_config_validate(cfg, where);
}

td_status td_model_config_validate(const td_model_config *c, const char *where) {
    if (c->hidden_size % (c->num_attention_heads * (c->tp_size > 1 ? c->tp_size : 1)) != 0)
        return td_error_set(TD_ERR_INVALID,
                            "%s: num_attention_heads (%d) must divide hidden_size (%d)", where,
                            c->num_attention_heads, c->hidden_size);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return td_error_set(TD_ERR_INVALID,
                            "%s: num_key_value_heads (%d) must divide num_attention_heads (%d)",
                            where, c->num_key_value_heads, c->num_attention_heads);
    if (c->arch == TD_ARCH_GPT2 && c->num_key_value_heads != c->num_attention_heads)
        return td_error_set(TD_ERR_INVALID,
                            "%s: gpt2 has no grouped-query attention (num_key_value_heads must "
                            "equal num_attention_heads)",
                            where);
    if (c->arch == TD_ARCH_LLAMA && td_model_config_head_dim(c) % 2 != 0)
        return td_error_set(TD_ERR_INVALID, "%s: head dimension %d must be even for RoPE", where,
                            td_model_config_head_dim(c));
    if (c->norm_eps <= 0)
        return td_error_set(TD_ERR_INVALID, "%s: norm epsilon must be positive", where);
    if (c->vocab_size > 1 << 24 || (long)c->hidden_size * c->vocab_size > (1L << 34))
        return td_error_set(TD_ERR_INVALID, "%s: vocab_size %d is too large", where, c->vocab_size);
    return TD_OK;
}

cJSON *td_model_config_to_hf_json(const td_model_config *c) {
    cJSON *j = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
    int gpt2 = c->arch == TD_ARCH_GPT2;
    cJSON_AddItemToArray(archs, cJSON_CreateString(gpt2 ? "GPT2LMHeadModel" : "LlamaForCausalLM"));
    cJSON_AddStringToObject(j, "model_type", gpt2 ? "gpt2" : "llama");
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    if (gpt2) {
        cJSON_AddNumberToObject(j, "n_embd", c->hidden_size);
        cJSON_AddNumberToObject(j, "n_layer", c->num_hidden_layers);
        cJSON_AddNumberToObject(j, "n_head", c->num_attention_heads);
        cJSON_AddNumberToObject(j, "n_positions", c->max_position_embeddings);
        cJSON_AddNumberToObject(j, "n_inner", c->intermediate_size);
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", c->norm_eps);
        cJSON_AddStringToObject(j, "activation_function", "gelu_new");
        cJSON_AddNumberToObject(j, "resid_pdrop", 0);
        cJSON_AddNumberToObject(j, "embd_pdrop", 0);
        cJSON_AddNumberToObject(j, "attn_pdrop", 0);
    } else {
        cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
        cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->num_hidden_layers);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->num_attention_heads);
        cJSON_AddNumberToObject(j, "num_key_value_heads", c->num_key_value_heads);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position_embeddings);
        cJSON_AddNumberToObject(j, "rms_norm_eps", c->norm_eps);
        cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
        cJSON_AddStringToObject(j, "hidden_act", "silu");
        cJSON_AddBoolToObject(j, "attention_bias", 0);
        cJSON_AddBoolToObject(j, "mlp_bias", 0);
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(j, "torch_dtype", "float32");
    return j;
}
