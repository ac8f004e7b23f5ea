// ep_model_cfg from an epserve YAML preset, the validator shared with
// config.json loading (model_cfg_hf.c) and preset lookup. The HF tensor
// names are model_cfg_names.c's; weights themselves live in weights.c.
#include "common/model_cfg.h"

#include "common/model_cfg_impl.h"
#include "common/yaml_util.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---- YAML schema -------------------------------------------------------------

enum { FAM_Q = 1, FAM_D = 2, FAM_ALL = 3 };

typedef enum {
    FT_INT,    // int field
    FT_U64,    // uint64_t field
    FT_FLOAT,  // float field
    FT_DOUBLE, // double field
    FT_BOOL,   // bool field
    FT_NAME,   // cfg->name
    FT_PATH,   // cfg->checkpoint, relative to the YAML file's directory
    FT_FAMILY, // cfg->arch (read before everything else)
    FT_TOPK,   // cfg->topk_method
    FT_YARN,   // rope_scaling.type, must be "yarn"
    FT_MAP,    // nested map with its own field table
} field_type;

typedef struct field {
    const char *key;
    field_type type;
    size_t off;              // offset in ep_model_cfg (unused for FT_MAP)
    unsigned allowed;        // families in which the key may appear
    unsigned required;       // families in which the key must appear
    const struct field *sub; // FT_MAP: NULL-key-terminated table
} field;

#define OFF(m) offsetof(ep_model_cfg, m)

static const field moe_fields[] = {
    {"num_experts", FT_INT, OFF(n_experts), FAM_ALL, FAM_ALL, NULL},
    {"num_experts_per_tok", FT_INT, OFF(k_base), FAM_ALL, FAM_ALL, NULL},
    {"moe_intermediate_size", FT_INT, OFF(moe_inter), FAM_ALL, FAM_ALL, NULL},
    {"num_shared_experts", FT_INT, OFF(n_shared), FAM_ALL, 0, NULL},
    {"first_k_dense_replace", FT_INT, OFF(first_k_dense), FAM_ALL, 0, NULL},
    {"topk_method", FT_TOPK, OFF(topk_method), FAM_ALL, 0, NULL},
    {"n_group", FT_INT, OFF(n_group), FAM_ALL, 0, NULL},
    {"topk_group", FT_INT, OFF(topk_group), FAM_ALL, 0, NULL},
    {"norm_topk_prob", FT_BOOL, OFF(norm_topk_prob), FAM_ALL, FAM_ALL, NULL},
    {"routed_scaling_factor", FT_FLOAT, OFF(routed_scaling_factor), FAM_ALL, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const field mla_fields[] = {
    {"q_lora_rank", FT_INT, OFF(q_lora_rank), FAM_D, FAM_D, NULL},
    {"kv_lora_rank", FT_INT, OFF(kv_lora_rank), FAM_D, FAM_D, NULL},
    {"qk_nope_head_dim", FT_INT, OFF(qk_nope_dim), FAM_D, FAM_D, NULL},
    {"qk_rope_head_dim", FT_INT, OFF(qk_rope_dim), FAM_D, FAM_D, NULL},
    {"v_head_dim", FT_INT, OFF(v_head_dim), FAM_D, FAM_D, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

// Defaults of the optional keys follow DeepSeek's modeling code
// (DeepseekV2YarnRotaryEmbedding: beta_fast 32, beta_slow 1, mscale 1,
// mscale_all_dim 0) and, for qwen3_moe, transformers' _compute_yarn_parameters
// (mscale not given, attention_factor from factor, truncate true), which also
// reads the two keys only Qwen3 accepts.
static const field yarn_fields[] = {
    {"type", FT_YARN, 0, FAM_ALL, FAM_ALL, NULL},
    {"factor", FT_FLOAT, OFF(yarn_factor), FAM_ALL, FAM_ALL, NULL},
    {"original_max_position_embeddings", FT_INT, OFF(yarn_orig_max_pos), FAM_ALL, FAM_ALL, NULL},
    {"beta_fast", FT_FLOAT, OFF(yarn_beta_fast), FAM_ALL, 0, NULL},
    {"beta_slow", FT_FLOAT, OFF(yarn_beta_slow), FAM_ALL, 0, NULL},
    {"mscale", FT_FLOAT, OFF(yarn_mscale), FAM_ALL, 0, NULL},
    {"mscale_all_dim", FT_FLOAT, OFF(yarn_mscale_all_dim), FAM_ALL, 0, NULL},
    {"attention_factor", FT_FLOAT, OFF(yarn_attn_factor), FAM_Q, 0, NULL},
    {"truncate", FT_BOOL, OFF(yarn_truncate), FAM_Q, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

// Concentration of the synthetic routing inputs (docs/synthetic.md §3); any
// key given marks the block set, the others keep the built-in values.
static const field synth_fields[] = {
    {"concentration_median", FT_DOUBLE, OFF(synth_conc_median), FAM_ALL, 0, NULL},
    {"concentration_sigma_token", FT_DOUBLE, OFF(synth_conc_sigma_token), FAM_ALL, 0, NULL},
    {"concentration_sigma_layer", FT_DOUBLE, OFF(synth_conc_sigma_layer), FAM_ALL, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const field top_fields[] = {
    {"name", FT_NAME, 0, FAM_ALL, 0, NULL},
    {"family", FT_FAMILY, 0, FAM_ALL, FAM_ALL, NULL},
    {"hidden_size", FT_INT, OFF(hidden), FAM_ALL, FAM_ALL, NULL},
    {"num_hidden_layers", FT_INT, OFF(n_layers), FAM_ALL, FAM_ALL, NULL},
    {"num_attention_heads", FT_INT, OFF(n_heads), FAM_ALL, FAM_ALL, NULL},
    {"num_key_value_heads", FT_INT, OFF(n_kv_heads), FAM_ALL, FAM_Q, NULL},
    {"head_dim", FT_INT, OFF(head_dim), FAM_Q, FAM_Q, NULL},
    {"intermediate_size", FT_INT, OFF(intermediate), FAM_ALL, FAM_ALL, NULL},
    {"max_position_embeddings", FT_INT, OFF(max_pos), FAM_ALL, FAM_ALL, NULL},
    {"vocab_size", FT_INT, OFF(vocab), FAM_ALL, FAM_ALL, NULL},
    {"rms_norm_eps", FT_FLOAT, OFF(rms_eps), FAM_ALL, FAM_ALL, NULL},
    {"rope_theta", FT_FLOAT, OFF(rope_theta), FAM_ALL, FAM_ALL, NULL},
    {"qk_norm", FT_BOOL, OFF(qk_norm), FAM_ALL, FAM_ALL, NULL},
    {"tie_word_embeddings", FT_BOOL, OFF(tie_embeddings), FAM_ALL, FAM_ALL, NULL},
    {"seed", FT_U64, OFF(seed), FAM_ALL, 0, NULL},
    {"checkpoint", FT_PATH, 0, FAM_ALL, 0, NULL},
    {"moe", FT_MAP, 0, FAM_ALL, FAM_ALL, moe_fields},
    {"mla", FT_MAP, 0, FAM_D, FAM_D, mla_fields},
    {"rope_scaling", FT_MAP, 0, FAM_ALL, 0, yarn_fields},
    {"synth", FT_MAP, 0, FAM_ALL, 0, synth_fields},
    {NULL, 0, 0, 0, 0, NULL},
};

static const char *family_name(unsigned fam)
{
    return fam == FAM_Q ? "qwen3_moe" : "deepseek_v2";
}

void ep_model_cfg_defaults(ep_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->n_group = 1;
    c->topk_group = 1;
    c->topk_method = EP_TOPK_GREEDY;
    c->routed_scaling_factor = 1.0f;
    c->yarn_beta_fast = 32.0f;
    c->yarn_beta_slow = 1.0f;
    c->yarn_mscale = 1.0f;
    c->yarn_mscale_all_dim = 0.0f;
    c->yarn_truncate = true;
    c->synth_conc_median = EP_SYNTH_CONC_MEDIAN;
    c->synth_conc_sigma_token = EP_SYNTH_CONC_SIGMA_TOKEN;
    c->synth_conc_sigma_layer = EP_SYNTH_CONC_SIGMA_LAYER;
}

void ep_model_cfg_qwen3_yarn_defaults(ep_model_cfg *c)
{
    c->yarn_mscale = 0.0f; // HF reads a missing mscale as None
    c->yarn_mscale_all_dim = 0.0f;
    c->yarn_attn_factor = 0.0f;
    c->yarn_truncate = true;
}

static void join_key(char *buf, size_t n, const char *prefix, const char *key)
{
    if (prefix[0])
        snprintf(buf, n, "%s.%s", prefix, key);
    else
        snprintf(buf, n, "%s", key);
}

static const char *field_expect(field_type t)
{
    switch (t) {
    case FT_INT:
        return "an integer";
    case FT_U64:
        return "an unsigned integer";
    case FT_FLOAT:
    case FT_DOUBLE:
        return "a number";
    case FT_BOOL:
        return "a boolean";
    case FT_NAME:
    case FT_PATH:
        return "a string";
    case FT_FAMILY:
        return "qwen3_moe or deepseek_v2";
    case FT_TOPK:
        return "greedy or group_limited_greedy";
    case FT_YARN:
        return "yarn";
    case FT_MAP:
        return "a mapping";
    }
    return "?";
}

void ep_path_dir(const char *path, char *buf, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, n, ".");
    else if (slash == path)
        snprintf(buf, n, "/");
    else
        snprintf(buf, n, "%.*s", (int)(slash - path), path);
}

static ep_status parse_map(ep_yaml_doc *d, yaml_node_t *map, const field *fields,
                           const char *prefix, unsigned fam, ep_model_cfg *c);

static ep_status parse_field(ep_yaml_doc *d, yaml_node_t *v, const field *f, const char *key,
                             unsigned fam, ep_model_cfg *c)
{
    char *base = (char *)c;
    char found[128];
    ep_status st = EP_OK;
    switch (f->type) {
    case FT_INT: {
        int64_t x;
        st = ep_yaml_int(d, v, key, INT_MIN, INT_MAX, &x);
        if (st == EP_OK) *(int *)(base + f->off) = (int)x;
        break;
    }
    case FT_U64:
        st = ep_yaml_u64(d, v, key, (uint64_t *)(base + f->off));
        break;
    case FT_FLOAT: {
        double x;
        st = ep_yaml_double(d, v, key, &x);
        if (st == EP_OK) *(float *)(base + f->off) = (float)x;
        break;
    }
    case FT_DOUBLE:
        st = ep_yaml_double(d, v, key, (double *)(base + f->off));
        break;
    case FT_BOOL:
        st = ep_yaml_bool(d, v, key, (bool *)(base + f->off));
        break;
    case FT_NAME: {
        const char *s;
        if ((st = ep_yaml_str(d, v, key, &s)) != EP_OK) break;
        if (!s[0] || strlen(s) >= sizeof c->name)
            return ep_errorf(EP_ERR_CONFIG,
                             "%s:%d: key '%s': expected 1 to %zu characters, found %zu", d->path,
                             ep_yaml_line(v), key, sizeof c->name - 1, strlen(s));
        ep_copy_str(c->name, sizeof c->name, s);
        break;
    }
    case FT_PATH: {
        const char *s;
        if ((st = ep_yaml_str(d, v, key, &s)) != EP_OK) break;
        char dir[1024];
        ep_path_dir(d->path, dir, sizeof dir);
        bool rel = s[0] != '/' && strcmp(dir, ".") != 0;
        size_t dlen = rel ? strlen(dir) + 1 : 0, slen = strlen(s);
        if (dlen + slen >= sizeof c->checkpoint)
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': path longer than %zu characters",
                             d->path, ep_yaml_line(v), key, sizeof c->checkpoint - 1);
        if (rel) {
            memcpy(c->checkpoint, dir, dlen - 1);
            c->checkpoint[dlen - 1] = '/';
        }
        memcpy(c->checkpoint + dlen, s, slen + 1);
        break;
    }
    case FT_FAMILY:
        break; // read up front by ep_model_cfg_from_yaml
    case FT_TOPK: {
        const char *s = NULL;
        if (v && v->type == YAML_SCALAR_NODE) s = (const char *)v->data.scalar.value;
        if (s && !strcmp(s, "greedy"))
            c->topk_method = EP_TOPK_GREEDY;
        else if (s && !strcmp(s, "group_limited_greedy"))
            c->topk_method = EP_TOPK_GROUP_LIMITED;
        else
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %s", d->path,
                             ep_yaml_line(v), key, field_expect(f->type),
                             ep_yaml_describe(v, found, sizeof found));
        break;
    }
    case FT_YARN: {
        const char *s = NULL;
        if (v && v->type == YAML_SCALAR_NODE) s = (const char *)v->data.scalar.value;
        if (!s || strcmp(s, "yarn") != 0)
            return ep_errorf(EP_ERR_CONFIG,
                             "%s:%d: key '%s': expected yarn (the only rope scaling epserve "
                             "implements), found %s",
                             d->path, ep_yaml_line(v), key,
                             ep_yaml_describe(v, found, sizeof found));
        break;
    }
    case FT_MAP:
        if (v->type != YAML_MAPPING_NODE)
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected a mapping, found %s",
                             d->path, ep_yaml_line(v), key,
                             ep_yaml_describe(v, found, sizeof found));
        if (f->sub == yarn_fields) c->has_yarn = true;
        if (f->sub == synth_fields) c->synth_conc_set = true;
        st = parse_map(d, v, f->sub, key, fam, c);
        break;
    }
    return st;
}

static void list_keys(const field *fields, unsigned fam, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (const field *f = fields; f->key && o < n; f++)
        if (f->allowed & fam) o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? ", " : "", f->key);
}

static ep_status parse_map(ep_yaml_doc *d, yaml_node_t *map, const field *fields,
                           const char *prefix, unsigned fam, ep_model_cfg *c)
{
    int nf = 0;
    while (fields[nf].key)
        nf++;
    int seen_line[32] = {0};
    EP_ASSERT(nf <= 32);
    char key[256], found[128];
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = ep_yaml_node(d, p->key);
        yaml_node_t *vn = ep_yaml_node(d, p->value);
        if (kn->type != YAML_SCALAR_NODE)
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: in '%s': expected a plain key, found %s",
                             d->path, ep_yaml_line(kn), prefix[0] ? prefix : "(top level)",
                             ep_yaml_describe(kn, found, sizeof found));
        const char *k = (const char *)kn->data.scalar.value;
        join_key(key, sizeof key, prefix, k);
        int i = 0;
        while (i < nf && strcmp(fields[i].key, k) != 0)
            i++;
        if (i == nf) {
            char valid[1024];
            list_keys(fields, fam, valid, sizeof valid);
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: unknown key '%s' (expected one of: %s)",
                             d->path, ep_yaml_line(kn), key, valid);
        }
        const field *f = &fields[i];
        if (!(f->allowed & fam))
            return ep_errorf(
                EP_ERR_CONFIG, "%s:%d: key '%s' applies only to family %s, found in a %s config",
                d->path, ep_yaml_line(kn), key, family_name(f->allowed), family_name(fam));
        if (seen_line[i])
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s' given twice (first on line %d)",
                             d->path, ep_yaml_line(kn), key, seen_line[i]);
        seen_line[i] = ep_yaml_line(kn);
        // An explicit null for an optional key means "use the default".
        if (ep_yaml_is_null(vn) && !(f->required & fam)) continue;
        ep_status st = parse_field(d, vn, f, key, fam, c);
        if (st != EP_OK) return st;
    }
    for (int i = 0; i < nf; i++) {
        if ((fields[i].required & fam) && !seen_line[i]) {
            join_key(key, sizeof key, prefix, fields[i].key);
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: missing required key '%s' (expected %s)",
                             d->path, ep_yaml_line(map), key, field_expect(fields[i].type));
        }
    }
    return EP_OK;
}

// Base name of path without directory and without extension, for the default name.
static void stem_of(const char *path, char *buf, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    size_t len = dot && dot != b ? (size_t)(dot - b) : strlen(b);
    snprintf(buf, n, "%.*s", (int)len, b);
}

ep_status ep_model_cfg_from_yaml(const char *path, ep_model_cfg *cfg)
{
    ep_model_cfg c;
    ep_model_cfg_defaults(&c);
    ep_yaml_doc d;
    ep_status st = ep_yaml_load(path, &d);
    if (st != EP_OK) return st;
    char found[128];
    yaml_node_t *root = ep_yaml_root(&d);
    if (!root || ep_yaml_is_null(root)) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s: empty YAML file, expected a mapping with family, hidden_size, moe, ...",
                       path);
        goto out;
    }
    if (root->type != YAML_MAPPING_NODE) {
        st = ep_errorf(EP_ERR_CONFIG, "%s:%d: expected a mapping at the top level, found %s", path,
                       ep_yaml_line(root), ep_yaml_describe(root, found, sizeof found));
        goto out;
    }
    // family decides which keys are allowed: read it first.
    yaml_node_t *famv = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = ep_yaml_node(&d, p->key);
        if (kn->type == YAML_SCALAR_NODE && !strcmp((const char *)kn->data.scalar.value, "family"))
            famv = ep_yaml_node(&d, p->value);
    }
    if (!famv) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s: missing required key 'family' (expected qwen3_moe or deepseek_v2)",
                       path);
        goto out;
    }
    unsigned fam = 0;
    if (famv->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)famv->data.scalar.value;
        if (!strcmp(s, "qwen3_moe")) fam = FAM_Q;
        if (!strcmp(s, "deepseek_v2")) fam = FAM_D;
    }
    if (!fam) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s:%d: key 'family': expected qwen3_moe or deepseek_v2, found %s", path,
                       ep_yaml_line(famv), ep_yaml_describe(famv, found, sizeof found));
        goto out;
    }
    c.arch = fam == FAM_Q ? EP_ARCH_QWEN3_MOE : EP_ARCH_DEEPSEEK_V2;
    if (fam == FAM_Q) ep_model_cfg_qwen3_yarn_defaults(&c);
    if ((st = parse_map(&d, root, top_fields, "", fam, &c)) != EP_OK) goto out;

    if (c.arch == EP_ARCH_DEEPSEEK_V2 && c.n_kv_heads == 0) c.n_kv_heads = c.n_heads;
    if (!c.name[0]) stem_of(path, c.name, sizeof c.name);
    ep_copy_str(c.source, sizeof c.source, path);
    if ((st = ep_model_cfg_validate(&c)) != EP_OK) goto out;
    *cfg = c;
out:
    ep_yaml_free(&d);
    return st;
}

// ---- validation --------------------------------------------------------------

static bool from_json(const ep_model_cfg *c)
{
    size_t n = strlen(c->source);
    return n >= 5 && strcmp(c->source + n - 5, ".json") == 0;
}

// Key names as the user wrote them: YAML paths, or config.json keys.
#define KEY(c, y, j) (from_json(c) ? (j) : (y))

static ep_status bad(const ep_model_cfg *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ep_status bad(const ep_model_cfg *c, const char *key, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': %s", c->source[0] ? c->source : "(config)", key,
                     msg);
}

static ep_status positive(const ep_model_cfg *c, const char *key, long long v)
{
    if (v > 0) return EP_OK;
    return bad(c, key, "expected a positive integer, found %lld", v);
}

ep_status ep_model_cfg_validate(const ep_model_cfg *c)
{
    ep_status st;
    bool q = c->arch == EP_ARCH_QWEN3_MOE;
    if (c->arch != EP_ARCH_QWEN3_MOE && c->arch != EP_ARCH_DEEPSEEK_V2)
        return bad(c, "family", "expected qwen3_moe or deepseek_v2, found arch %d", (int)c->arch);
    if (!c->name[0]) return bad(c, "name", "expected a non-empty name, found \"\"");
    const struct {
        const char *y, *j;
        int v;
    } pos[] = {
        {"hidden_size", "hidden_size", c->hidden},
        {"num_hidden_layers", "num_hidden_layers", c->n_layers},
        {"num_attention_heads", "num_attention_heads", c->n_heads},
        {"num_key_value_heads", "num_key_value_heads", c->n_kv_heads},
        {"intermediate_size", "intermediate_size", c->intermediate},
        {"max_position_embeddings", "max_position_embeddings", c->max_pos},
        {"vocab_size", "vocab_size", c->vocab},
        {"moe.num_experts", q ? "num_experts" : "n_routed_experts", c->n_experts},
        {"moe.num_experts_per_tok", "num_experts_per_tok", c->k_base},
        {"moe.moe_intermediate_size", "moe_intermediate_size", c->moe_inter},
        {"moe.n_group", "n_group", c->n_group},
        {"moe.topk_group", "topk_group", c->topk_group},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(pos); i++)
        if ((st = positive(c, KEY(c, pos[i].y, pos[i].j), pos[i].v)) != EP_OK) return st;
    if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
        return bad(c, "rms_norm_eps", "expected a positive number, found %g", (double)c->rms_eps);
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return bad(c, "rope_theta", "expected a positive number, found %g", (double)c->rope_theta);
    if (c->n_heads % c->n_kv_heads != 0)
        return bad(c, "num_key_value_heads",
                   "expected a divisor of num_attention_heads (%d), found %d", c->n_heads,
                   c->n_kv_heads);

    const char *k_key = KEY(c, "moe.num_experts_per_tok", "num_experts_per_tok");
    const char *e_key = KEY(c, "moe.num_experts", q ? "num_experts" : "n_routed_experts");
    const char *g_key = KEY(c, "moe.n_group", "n_group");
    const char *tg_key = KEY(c, "moe.topk_group", "topk_group");
    if (c->k_base > c->n_experts)
        return bad(c, k_key, "expected at most %s (%d), found %d", e_key, c->n_experts, c->k_base);
    if (c->n_experts % c->n_group != 0)
        return bad(c, g_key, "expected a divisor of %s (%d), found %d", e_key, c->n_experts,
                   c->n_group);
    if (c->topk_group > c->n_group)
        return bad(c, tg_key, "expected at most %s (%d), found %d", g_key, c->n_group,
                   c->topk_group);
    if (c->topk_method == EP_TOPK_GROUP_LIMITED) {
        if (c->n_group < 2)
            return bad(c, g_key, "group_limited_greedy needs at least 2 groups, found %d",
                       c->n_group);
        int reachable = c->topk_group * (c->n_experts / c->n_group);
        if (c->k_base > reachable)
            return bad(c, k_key,
                       "expected at most topk_group * experts per group = %d * %d = %d "
                       "(group_limited_greedy), found %d",
                       c->topk_group, c->n_experts / c->n_group, reachable, c->k_base);
    } else if (c->topk_method != EP_TOPK_GREEDY) {
        return bad(c, KEY(c, "moe.topk_method", "topk_method"),
                   "expected greedy or group_limited_greedy, found method %d", (int)c->topk_method);
    }
    if (c->n_shared < 0)
        return bad(c, KEY(c, "moe.num_shared_experts", "n_shared_experts"),
                   "expected a non-negative integer, found %d", c->n_shared);
    const char *fk_key = KEY(c, "moe.first_k_dense_replace", "first_k_dense_replace");
    if (c->first_k_dense < 0 || c->first_k_dense >= c->n_layers)
        return bad(c, fk_key, "expected an integer in [0, num_hidden_layers = %d), found %d",
                   c->n_layers, c->first_k_dense);
    if (!(c->routed_scaling_factor > 0.0f) || !isfinite(c->routed_scaling_factor))
        return bad(c, KEY(c, "moe.routed_scaling_factor", "routed_scaling_factor"),
                   "expected a positive number, found %g", (double)c->routed_scaling_factor);

    if (q) {
        // Qwen3-MoE's own code has no shared experts, no dense layers in
        // these configs, plain top-k and no scaling: anything else would be
        // a different model that the HF layout cannot express.
        if ((st = positive(c, "head_dim", c->head_dim)) != EP_OK) return st;
        if (c->head_dim % 2)
            return bad(c, "head_dim", "expected an even number (RoPE rotates pairs), found %d",
                       c->head_dim);
        if (c->n_shared != 0)
            return bad(c, KEY(c, "moe.num_shared_experts", "n_shared_experts"),
                       "qwen3_moe has no shared experts: expected 0, found %d", c->n_shared);
        if (c->first_k_dense != 0)
            return bad(c, fk_key,
                       "epserve supports only all-MoE Qwen3 layers: expected 0, found %d",
                       c->first_k_dense);
        if (c->topk_method != EP_TOPK_GREEDY)
            return bad(c, KEY(c, "moe.topk_method", "topk_method"),
                       "qwen3_moe routes with plain top-k: expected greedy, found "
                       "group_limited_greedy");
        if (c->routed_scaling_factor != 1.0f)
            return bad(c, KEY(c, "moe.routed_scaling_factor", "routed_scaling_factor"),
                       "qwen3_moe does not scale routing weights: expected 1.0, found %g",
                       (double)c->routed_scaling_factor);
        if (c->q_lora_rank || c->kv_lora_rank || c->qk_nope_dim || c->qk_rope_dim || c->v_head_dim)
            return bad(c, "mla", "qwen3_moe has no MLA: expected all MLA dims 0");
    } else {
        if (c->n_kv_heads != c->n_heads)
            return bad(c, "num_key_value_heads",
                       "MLA has one KV head per attention head: expected %d, found %d", c->n_heads,
                       c->n_kv_heads);
        if (c->qk_norm)
            return bad(c, "qk_norm", "deepseek_v2 has no q/k norm: expected false, found true");
        if (c->q_lora_rank < 0)
            return bad(c, KEY(c, "mla.q_lora_rank", "q_lora_rank"),
                       "expected 0 (no q LoRA) or a positive rank, found %d", c->q_lora_rank);
        if ((st = positive(c, KEY(c, "mla.kv_lora_rank", "kv_lora_rank"), c->kv_lora_rank)) ||
            (st =
                 positive(c, KEY(c, "mla.qk_nope_head_dim", "qk_nope_head_dim"), c->qk_nope_dim)) ||
            (st =
                 positive(c, KEY(c, "mla.qk_rope_head_dim", "qk_rope_head_dim"), c->qk_rope_dim)) ||
            (st = positive(c, KEY(c, "mla.v_head_dim", "v_head_dim"), c->v_head_dim)))
            return st;
        if (c->qk_rope_dim % 2)
            return bad(c, KEY(c, "mla.qk_rope_head_dim", "qk_rope_head_dim"),
                       "expected an even number (RoPE rotates pairs), found %d", c->qk_rope_dim);
    }
    if (c->quant != EP_QUANT_NONE &&
        (c->quant != EP_QUANT_FP8_BLOCK || c->quant_block[0] <= 0 || c->quant_block[1] <= 0))
        return bad(c, "quantization_config",
                   "expected block-scaled FP8 with positive weight_block_size, found method %d "
                   "with blocks [%d, %d]",
                   (int)c->quant, c->quant_block[0], c->quant_block[1]);
    if (c->has_yarn) {
        const char *p = "rope_scaling."; // the same spelling in YAML and config.json
        char key[96];
        if (!(c->yarn_factor >= 1.0f) || !isfinite(c->yarn_factor)) {
            snprintf(key, sizeof key, "%sfactor", p);
            return bad(c, key, "expected a number >= 1, found %g", (double)c->yarn_factor);
        }
        if (c->yarn_orig_max_pos <= 0) {
            snprintf(key, sizeof key, "%soriginal_max_position_embeddings", p);
            return bad(c, key, "expected a positive integer, found %d", c->yarn_orig_max_pos);
        }
        if (!(c->yarn_beta_fast > c->yarn_beta_slow) || !(c->yarn_beta_slow > 0.0f) ||
            !isfinite(c->yarn_beta_fast)) {
            snprintf(key, sizeof key, "%sbeta_fast", p);
            return bad(c, key, "expected beta_fast > beta_slow > 0, found %g and %g",
                       (double)c->yarn_beta_fast, (double)c->yarn_beta_slow);
        }
        // Qwen3 (HF): mscale 0 means "not given", as a missing key does.
        if (!(q ? c->yarn_mscale >= 0.0f : c->yarn_mscale > 0.0f) ||
            !(c->yarn_mscale_all_dim >= 0.0f) || !isfinite(c->yarn_mscale) ||
            !isfinite(c->yarn_mscale_all_dim)) {
            snprintf(key, sizeof key, "%smscale", p);
            return bad(c, key, "expected mscale %s 0 and mscale_all_dim >= 0, found %g and %g",
                       q ? ">=" : ">", (double)c->yarn_mscale, (double)c->yarn_mscale_all_dim);
        }
        if (!(c->yarn_attn_factor >= 0.0f) || !isfinite(c->yarn_attn_factor) ||
            (!q && c->yarn_attn_factor != 0.0f)) {
            snprintf(key, sizeof key, "%sattention_factor", p);
            return bad(c, key, "%s, found %g",
                       q ? "expected a positive number" : "deepseek_v2 does not read it",
                       (double)c->yarn_attn_factor);
        }
        if (!q && !c->yarn_truncate) {
            snprintf(key, sizeof key, "%struncate", p);
            return bad(c, key, "deepseek_v2 always truncates: expected true, found false");
        }
    }
    if (c->synth_conc_set) {
        // A median of 0 or a huge spread would put every token at f = 0 or
        // f_max: no routing structure left to calibrate.
        const char *mk = KEY(c, "synth.concentration_median", "epserve_synth.concentration_median");
        if (!(c->synth_conc_median > 0.0 && c->synth_conc_median <= 100.0))
            return bad(c, mk, "expected a number in (0, 100], found %g", c->synth_conc_median);
        const struct {
            const char *y, *j;
            double v;
        } sig[] = {
            {"synth.concentration_sigma_token", "epserve_synth.concentration_sigma_token",
             c->synth_conc_sigma_token},
            {"synth.concentration_sigma_layer", "epserve_synth.concentration_sigma_layer",
             c->synth_conc_sigma_layer},
        };
        for (size_t i = 0; i < EP_ARRAY_LEN(sig); i++)
            if (!(sig[i].v >= 0.0 && sig[i].v <= 3.0))
                return bad(c, KEY(c, sig[i].y, sig[i].j), "expected a number in [0, 3], found %g",
                           sig[i].v);
    }
    return EP_OK;
}

// ---- loading by spec -----------------------------------------------------------

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

// Comma-separated preset names found in dir (*.yaml), for the error message.
static void list_presets(const char *dir, char *buf, size_t n)
{
    buf[0] = '\0';
    DIR *dp = opendir(dir);
    if (!dp) return;
    size_t o = 0;
    struct dirent *de;
    while ((de = readdir(dp)) && o < n) {
        size_t len = strlen(de->d_name);
        if (len > 5 && ends_with(de->d_name, ".yaml"))
            o += (size_t)snprintf(buf + o, n - o, "%s%.*s", o ? ", " : "", (int)(len - 5),
                                  de->d_name);
    }
    closedir(dp);
}

ep_status ep_model_cfg_load(const char *spec, ep_model_cfg *cfg)
{
    if (!spec || !spec[0])
        return ep_errorf(
            EP_ERR_ARG,
            "model: expected a preset name, YAML file or checkpoint directory, found \"\"");
    struct stat sb;
    if (stat(spec, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char p[2048];
        snprintf(p, sizeof p, "%s/config.json", spec);
        if (!is_file(p))
            return ep_errorf(EP_ERR_IO, "model %s: a directory, but %s does not exist", spec, p);
        return ep_model_cfg_from_hf_json(p, cfg);
    }
    if (ends_with(spec, ".yaml") || ends_with(spec, ".yml"))
        return ep_model_cfg_from_yaml(spec, cfg);
    if (is_file(spec))
        return ends_with(spec, ".json") ? ep_model_cfg_from_hf_json(spec, cfg)
                                        : ep_model_cfg_from_yaml(spec, cfg);
    if (strchr(spec, '/')) return ep_errorf(EP_ERR_IO, "model %s: no such file or directory", spec);

    char tried[3][2048];
    int nt = 0;
    const char *env = getenv("EP_CONFIG_DIR");
    if (env && env[0]) snprintf(tried[nt++], sizeof tried[0], "%s/%s.yaml", env, spec);
    snprintf(tried[nt++], sizeof tried[0], "./configs/models/%s.yaml", spec);
    snprintf(tried[nt++], sizeof tried[0], "%s/configs/models/%s.yaml", EP_SOURCE_DIR, spec);
    for (int i = 0; i < nt; i++)
        if (is_file(tried[i])) return ep_model_cfg_from_yaml(tried[i], cfg);
    char avail[1024];
    list_presets(EP_SOURCE_DIR "/configs/models", avail, sizeof avail);
    return ep_errorf(EP_ERR_ARG, "model '%s': no such preset; tried %s%s%s%s%s (available: %s)",
                     spec, tried[0], nt > 1 ? ", " : "", nt > 1 ? tried[1] : "", nt > 2 ? ", " : "",
                     nt > 2 ? tried[2] : "", avail[0] ? avail : "none");
}

// ---- queries ----------------------------------------------------------------

int ep_model_n_moe_layers(const ep_model_cfg *c)
{
    int n = 0;
    for (int l = 0; l < c->n_layers; l++)
        n += ep_model_layer_is_moe(c, l);
    return n;
}
