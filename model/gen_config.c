// generation_config.json: one table classifies every key transformers'
// GenerationConfig writes (honoured, checked, no effect, or neutral only at
// one value); the reader checks the keys epserve uses and collects the rest
// that would change the output as "ignored". No sampling here (sample.c).
#include "model/gen_config.h"

#include "common/json_util.h"
#include "common/weights.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef enum {
    K_TEMPERATURE,
    K_TOP_P,
    K_TOP_K,
    K_REPETITION_PENALTY,
    K_DO_SAMPLE,
    K_MAX_NEW_TOKENS,
    K_EOS,
    K_BOS,
    K_PAD,
    K_META,    // no effect on the tokens generated (metadata, output format, caching, beam-only)
    K_NEUTRAL, // changes transformers' output unless null / false / empty or `neutral`
} key_kind;

static const struct {
    const char *key;
    key_kind kind;
    double neutral;  // K_NEUTRAL: the number that means "off" (NAN: only null / false / empty)
    const char *why; // K_NEUTRAL: what epserve does instead
} KEYS[] = {
    {"temperature", K_TEMPERATURE, 0, NULL},
    {"top_p", K_TOP_P, 0, NULL},
    {"top_k", K_TOP_K, 0, NULL},
    {"do_sample", K_DO_SAMPLE, 0, NULL},
    {"max_new_tokens", K_MAX_NEW_TOKENS, 0, NULL},
    {"eos_token_id", K_EOS, 0, NULL},
    {"bos_token_id", K_BOS, 0, NULL},
    {"pad_token_id", K_PAD, 0, NULL},
    {"transformers_version", K_META, 0, NULL},
    {"_from_model_config", K_META, 0, NULL},
    {"use_cache", K_META, 0, NULL},
    {"return_dict_in_generate", K_META, 0, NULL},
    {"output_attentions", K_META, 0, NULL},
    {"output_hidden_states", K_META, 0, NULL},
    {"output_scores", K_META, 0, NULL},
    {"output_logits", K_META, 0, NULL},
    {"renormalize_logits", K_META, 0, NULL},
    {"remove_invalid_values", K_META, 0, NULL},
    {"length_penalty", K_META, 0, NULL}, // beam search only (num_beams is checked)
    {"early_stopping", K_META, 0, NULL}, // beam search only
    {"cache_implementation", K_META, 0, NULL},
    {"cache_config", K_META, 0, NULL},
    {"return_legacy_cache", K_META, 0, NULL},
    {"compile_config", K_META, 0, NULL},
    {"disable_compile", K_META, 0, NULL},
    {"low_memory", K_META, 0, NULL},
    {"decoder_start_token_id", K_META, 0, NULL}, // encoder-decoder models only
    {"is_assistant", K_META, 0, NULL},
    {"num_assistant_tokens", K_META, 0, NULL}, // speculative decoding: same tokens
    {"num_assistant_tokens_schedule", K_META, 0, NULL},
    {"assistant_confidence_threshold", K_META, 0, NULL},
    {"prompt_lookup_num_tokens", K_META, 0, NULL},
    {"max_matching_ngram_size", K_META, 0, NULL},
    {"repetition_penalty", K_REPETITION_PENALTY, 0, NULL},
    {"encoder_repetition_penalty", K_NEUTRAL, 1.0, "epserve's sampler has no such penalty"},
    {"no_repeat_ngram_size", K_NEUTRAL, 0.0, "epserve does not block repeated n-grams"},
    {"encoder_no_repeat_ngram_size", K_NEUTRAL, 0.0, "epserve does not block repeated n-grams"},
    {"num_beams", K_NEUTRAL, 1.0, "epserve samples one sequence; no beam search"},
    {"num_beam_groups", K_NEUTRAL, 1.0, "epserve has no beam search"},
    {"diversity_penalty", K_NEUTRAL, 0.0, "epserve has no beam search"},
    {"num_return_sequences", K_NEUTRAL, 1.0, "epserve returns one sequence per request"},
    {"typical_p", K_NEUTRAL, 1.0, "epserve's sampler has no typical sampling"},
    {"min_p", K_NEUTRAL, 0.0, "epserve's sampler has no min-p"},
    {"epsilon_cutoff", K_NEUTRAL, 0.0, "epserve's sampler has no epsilon cutoff"},
    {"eta_cutoff", K_NEUTRAL, 0.0, "epserve's sampler has no eta cutoff"},
    {"min_length", K_NEUTRAL, 0.0, "epserve has no minimum length"},
    {"min_new_tokens", K_NEUTRAL, 0.0, "epserve has no minimum length"},
    {"max_length", K_NEUTRAL, NAN,
     "epserve bounds a request by max_tokens (or max_new_tokens) and the context length"},
    {"max_time", K_NEUTRAL, NAN, "epserve has no time limit per request"},
    {"penalty_alpha", K_NEUTRAL, NAN, "epserve has no contrastive search"},
    {"guidance_scale", K_NEUTRAL, 1.0, "epserve has no classifier-free guidance"},
    {"bad_words_ids", K_NEUTRAL, NAN, "epserve does not ban words"},
    {"force_words_ids", K_NEUTRAL, NAN, "epserve does not force words"},
    {"constraints", K_NEUTRAL, NAN, "epserve has no constrained decoding"},
    {"suppress_tokens", K_NEUTRAL, NAN, "epserve does not suppress tokens"},
    {"begin_suppress_tokens", K_NEUTRAL, NAN, "epserve does not suppress tokens"},
    {"forced_decoder_ids", K_NEUTRAL, NAN, "epserve does not force tokens"},
    {"forced_bos_token_id", K_NEUTRAL, NAN, "epserve does not force tokens"},
    {"forced_eos_token_id", K_NEUTRAL, NAN, "epserve does not force tokens"},
    {"sequence_bias", K_NEUTRAL, NAN, "epserve has no sequence bias (requests have no logit_bias)"},
    {"exponential_decay_length_penalty", K_NEUTRAL, NAN, "epserve has no length penalty"},
    {"stop_strings", K_NEUTRAL, NAN, "give stop strings per request ('stop', --stop)"},
    {"token_healing", K_NEUTRAL, NAN, "epserve does not heal tokens"},
    {"dola_layers", K_NEUTRAL, NAN, "epserve has no DoLa decoding"},
    {"watermarking_config", K_NEUTRAL, NAN, "epserve does not watermark"},
};

// "an integer 5", "a string \"abc\"", ... for "found" in messages.
static const char *describe(const json_t *v, char *buf, size_t n)
{
    if (json_is_null(v)) {
        snprintf(buf, n, "null");
        return buf;
    }
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    size_t len = text ? strlen(text) : 0;
    snprintf(buf, n, "%s %.*s%s", ep_json_type_name(v), (int)(len > 48 ? 48 : len),
             text ? text : "", len > 48 ? "..." : "");
    free(text);
    return buf;
}

static ep_status bad(const char *path, const char *key, const char *expect, const json_t *v)
{
    char found[128];
    return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': expected %s, found %s", path, key, expect,
                     describe(v, found, sizeof found));
}

static bool neutral(const json_t *v, double value)
{
    if (json_is_null(v) || json_is_false(v)) return true;
    if (json_is_array(v)) return json_array_size(v) == 0;
    if (json_is_object(v)) return json_object_size(v) == 0;
    return json_is_number(v) && !isnan(value) && json_number_value(v) == value;
}

static ep_status token_id(const char *path, const char *key, const json_t *v, int vocab, int *out)
{
    char expect[64];
    snprintf(expect, sizeof expect, "a token id in [0, %d)", vocab);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
        return bad(path, key, expect, v);
    *out = (int)json_integer_value(v);
    return EP_OK;
}

static void ignore(ep_gen_config *g, const char *key, const char *why)
{
    if (g->n_ignored >= EP_GEN_MAX_IGNORED) return;
    snprintf(g->ignored[g->n_ignored].key, sizeof g->ignored[0].key, "%s", key);
    snprintf(g->ignored[g->n_ignored].why, sizeof g->ignored[0].why, "%s", why);
    g->n_ignored++;
}

static ep_status read_key(const char *path, const char *k, json_t *v, int vocab, ep_gen_config *g)
{
    size_t i = 0;
    while (i < EP_ARRAY_LEN(KEYS) && strcmp(KEYS[i].key, k))
        i++;
    if (i == EP_ARRAY_LEN(KEYS)) {
        ignore(g, k, "not a generation_config key epserve knows");
        return EP_OK;
    }
    // null is transformers' "not set" for every key.
    if (json_is_null(v) && KEYS[i].kind != K_NEUTRAL) return EP_OK;
    switch (KEYS[i].kind) {
    case K_TEMPERATURE:
        if (!json_is_number(v) || !(json_number_value(v) >= 0) || !isfinite(json_number_value(v)))
            return bad(path, k, "a number >= 0", v);
        g->temperature = (float)json_number_value(v);
        g->has_temperature = true;
        return EP_OK;
    case K_TOP_P:
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
            return bad(path, k, "a number in (0, 1]", v);
        g->top_p = (float)json_number_value(v);
        g->has_top_p = true;
        return EP_OK;
    case K_TOP_K:
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT_MAX)
            return bad(path, k, "an integer >= 0 (0: no limit)", v);
        g->top_k = (int)json_integer_value(v);
        g->has_top_k = true;
        return EP_OK;
    case K_REPETITION_PENALTY:
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 100))
            return bad(path, k, "a number in (0, 100] (1: off)", v);
        g->repetition_penalty = (float)json_number_value(v);
        g->has_repetition_penalty = true;
        return EP_OK;
    case K_DO_SAMPLE:
        if (!json_is_boolean(v)) return bad(path, k, "a boolean", v);
        g->do_sample = json_is_true(v);
        g->has_do_sample = true;
        return EP_OK;
    case K_MAX_NEW_TOKENS:
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > INT_MAX)
            return bad(path, k, "an integer >= 1", v);
        g->max_new_tokens = (int)json_integer_value(v);
        g->has_max_new_tokens = true;
        return EP_OK;
    case K_EOS: {
        if (json_is_integer(v)) return token_id(path, k, v, vocab, &g->eos[g->n_eos++]);
        if (!json_is_array(v) || json_array_size(v) > EP_GEN_MAX_EOS) {
            char expect[96];
            snprintf(expect, sizeof expect, "a token id or a list of at most %d token ids",
                     EP_GEN_MAX_EOS);
            return bad(path, k, expect, v);
        }
        for (size_t j = 0; j < json_array_size(v); j++) {
            char key[64];
            snprintf(key, sizeof key, "%s[%zu]", k, j);
            ep_status st = token_id(path, key, json_array_get(v, j), vocab, &g->eos[g->n_eos]);
            if (st) return st;
            g->n_eos++;
        }
        return EP_OK;
    }
    case K_BOS:
        return token_id(path, k, v, vocab, &g->bos);
    case K_PAD:
        return token_id(path, k, v, vocab, &g->pad);
    case K_META:
        return EP_OK;
    case K_NEUTRAL:
        if (!neutral(v, KEYS[i].neutral)) {
            char found[128], why[200];
            snprintf(why, sizeof why, "%s (found %s)", KEYS[i].why,
                     describe(v, found, sizeof found));
            ignore(g, k, why);
        }
        return EP_OK;
    }
    return EP_OK;
}

ep_status ep_gen_config_read(const char *path, int vocab, ep_gen_config *out)
{
    ep_gen_config g;
    memset(&g, 0, sizeof g);
    g.bos = g.pad = -1;
    if (strlen(path) >= sizeof g.path)
        return ep_errorf(EP_ERR_ARG, "%s: path longer than %zu characters", path,
                         sizeof g.path - 1);
    json_error_t je;
    json_t *r = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!r) {
        struct stat sb;
        if (stat(path, &sb) != 0)
            return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return ep_errorf(EP_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s", path,
                         je.line, je.column, je.text);
    }
    ep_status st = EP_OK;
    if (!json_is_object(r)) {
        st = ep_errorf(EP_ERR_CONFIG, "%s: expected a JSON object, found %s", path,
                       ep_json_type_name(r));
    } else {
        const char *k;
        json_t *v;
        json_object_foreach(r, k, v)
        {
            if ((st = read_key(path, k, v, vocab, &g))) break;
        }
    }
    json_decref(r);
    if (st) return st;
    g.present = true;
    snprintf(g.path, sizeof g.path, "%s", path);
    *out = g;
    return EP_OK;
}

ep_status ep_gen_config_load(const ep_model_cfg *cfg, ep_gen_config *g)
{
    memset(g, 0, sizeof *g);
    g->bos = g->pad = -1;
    if (!cfg->checkpoint[0]) return EP_OK;
    char path[1100];
    snprintf(path, sizeof path, "%s/generation_config.json", cfg->checkpoint);
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return EP_OK;
    return ep_gen_config_read(path, cfg->vocab, g);
}

void ep_gen_config_warn(const ep_gen_config *g)
{
    for (int i = 0; i < g->n_ignored; i++)
        EP_WARN("%s: key '%s': %s; not applied", g->path, g->ignored[i].key, g->ignored[i].why);
}

void ep_gen_config_sample_defaults(const ep_gen_config *g, ep_sample_params *p)
{
    if (g->has_temperature) p->temperature = g->temperature;
    // transformers: do_sample false is greedy whatever the sampling keys say;
    // do_sample true samples, at temperature 1 unless the file gives one.
    if (g->has_do_sample && !g->do_sample) p->temperature = 0.0f;
    if (g->has_do_sample && g->do_sample && !g->has_temperature) p->temperature = 1.0f;
    if (g->has_top_k) p->top_k = g->top_k;
    if (g->has_top_p) p->top_p = g->top_p;
    if (g->has_repetition_penalty) p->repetition_penalty = g->repetition_penalty;
}

static json_t *id_or_null(int id)
{
    return id >= 0 ? json_integer(id) : json_null();
}

char *ep_gen_config_json(const ep_gen_config *g, const ep_sample_params *d, const int *eos,
                         int n_eos)
{
    json_t *o = json_object(), *e = json_array(), *ig = json_array();
    for (int i = 0; i < n_eos; i++)
        json_array_append_new(e, json_integer(eos[i]));
    for (int i = 0; i < g->n_ignored; i++)
        json_array_append_new(ig, json_string(g->ignored[i].key));
    json_object_set_new(o, "file", g->present ? json_string(g->path) : json_null());
    json_object_set_new(o, "temperature", json_real(ep_json_float(d->temperature)));
    json_object_set_new(o, "top_p", json_real(ep_json_float(d->top_p)));
    json_object_set_new(o, "top_k", json_integer(d->top_k));
    json_object_set_new(
        o, "repetition_penalty",
        json_real(ep_json_float(d->repetition_penalty > 0 ? d->repetition_penalty : 1.0f)));
    json_object_set_new(o, "max_tokens",
                        g->has_max_new_tokens ? json_integer(g->max_new_tokens) : json_null());
    json_object_set_new(o, "eos_token_id", e);
    json_object_set_new(o, "bos_token_id", id_or_null(g->bos));
    json_object_set_new(o, "pad_token_id", id_or_null(g->pad));
    json_object_set_new(o, "ignored", ig);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    EP_ASSERT(s);
    return s;
}

// ---- writing (make-model) ------------------------------------------------------

ep_status ep_gen_config_write(const ep_gen_config *g, const char *path)
{
    json_t *o = json_object();
    if (g->bos >= 0) json_object_set_new(o, "bos_token_id", json_integer(g->bos));
    if (g->has_do_sample) json_object_set_new(o, "do_sample", json_boolean(g->do_sample));
    if (g->n_eos == 1) {
        json_object_set_new(o, "eos_token_id", json_integer(g->eos[0]));
    } else if (g->n_eos > 1) {
        json_t *e = json_array();
        for (int i = 0; i < g->n_eos; i++)
            json_array_append_new(e, json_integer(g->eos[i]));
        json_object_set_new(o, "eos_token_id", e);
    }
    if (g->has_max_new_tokens)
        json_object_set_new(o, "max_new_tokens", json_integer(g->max_new_tokens));
    if (g->pad >= 0) json_object_set_new(o, "pad_token_id", json_integer(g->pad));
    if (g->has_temperature)
        json_object_set_new(o, "temperature", json_real(ep_json_float(g->temperature)));
    if (g->has_top_k) json_object_set_new(o, "top_k", json_integer(g->top_k));
    if (g->has_top_p) json_object_set_new(o, "top_p", json_real(ep_json_float(g->top_p)));
    ep_status st = ep_json_write_atomic(
        path, o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return st;
}

void ep_gen_config_synth(const ep_model_cfg *cfg, ep_gen_config *g)
{
    ep_synth_special_ids ids;
    ep_synth_special_ids_of(cfg, &ids);
    memset(g, 0, sizeof *g);
    g->bos = ids.bos;
    g->pad = -1;
    g->has_do_sample = g->do_sample = true;
    g->has_temperature = g->has_top_p = true;
    g->top_p = 0.95f;
    g->eos[g->n_eos++] = ids.eos;
    if (cfg->arch == EP_ARCH_DEEPSEEK_V2) {
        g->temperature = 0.3f;
        return;
    }
    g->eos[g->n_eos++] = ids.bos; // Qwen3: [<|im_end|>, <|endoftext|>]
    g->pad = ids.pad;
    g->temperature = 0.6f;
    g->has_top_k = true;
    g->top_k = 20;
}
