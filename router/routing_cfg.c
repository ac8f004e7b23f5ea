// The routing config (configs/routing/*.yaml): defaults, the libyaml loader
// that checks every value against the model as it reads it (errors carry
// file, line, key, expected and found), validation of in-memory configs, and
// the atomic writer that calibration uses. It knows nothing of routing itself.
#include "router/policy.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

static const char *const pick_strategy_names = "ABCDE";
// Written back by ep_routing_cfg_write; `true` reads as rank (its meaning
// before node existed), so older YAMLs keep routing as they did.
static const char *const ban_locality_names[] = {"false", "rank", "node"};

// ---- defaults, copy, free --------------------------------------------------

void ep_routing_cfg_default(ep_routing_cfg *rc, const ep_model_cfg *m, ep_policy_kind kind)
{
    memset(rc, 0, sizeof *rc);
    rc->policy = kind;
    rc->n_layers = m->n_layers;
    rc->n_experts = m->n_experts;
    rc->k_base = m->k_base;
    rc->first_k_dense = m->first_k_dense;
    // Ban&Pick paper defaults (DESIGN.md §4); K_min 3 unless the model keeps fewer.
    rc->ban.k_min = EP_MIN(3, m->k_base);
    rc->ban.lambda = 0.7f;
    rc->ban.beta = 0.5f;
    rc->ban.r_min = 0.35f;
    rc->ban.r_max = 0.92f;
    rc->ban.locality_ratio = 0.8f;
    rc->pick.strategy = kind == EP_POLICY_BANPICK ? EP_PICK_C : EP_PICK_D;
    rc->pick.range = 2;
    rc->pick.domain = -1;
    rc->topp.threshold = 0.8f;
    // Qwen3 (top-8): 4 and 6 as the paper ran DES; other k_base scale alike.
    rc->des.k_lo = EP_MAX(1, m->k_base / 2);
    rc->des.k_hi = EP_MAX(rc->des.k_lo, 3 * m->k_base / 4);
    // laser (our rule): see docs/routing.md for how these were chosen.
    rc->laser.after = EP_POLICY_BASELINE;
    rc->laser.peak_ratio = 2.0f;
    rc->laser.widen_ratio = 0.5f;
    rc->laser.keep_top = EP_MIN(1, m->k_base);
}

static void *dup_mem(const void *p, size_t n)
{
    if (!p) return NULL;
    void *q = ep_xmalloc(n);
    memcpy(q, p, n);
    return q;
}

void ep_routing_cfg_copy(ep_routing_cfg *dst, const ep_routing_cfg *src)
{
    size_t L = (size_t)src->n_layers, LE = L * src->n_experts;
    *dst = *src;
    dst->ban.layer_sensitivity = dup_mem(src->ban.layer_sensitivity, L * sizeof(float));
    dst->des.median_ratio =
        dup_mem(src->des.median_ratio, L * (size_t)(src->k_base - 1) * sizeof(float));
    dst->pick.domains = NULL;
    if (src->pick.n_domains > 0) {
        dst->pick.domains = ep_xcalloc((size_t)src->pick.n_domains, sizeof(ep_pick_domain));
        for (int d = 0; d < src->pick.n_domains; d++) {
            const ep_pick_domain *s = &src->pick.domains[d];
            ep_pick_domain *t = &dst->pick.domains[d];
            memcpy(t->name, s->name, sizeof t->name);
            t->key = dup_mem(s->key, LE);
            t->frequency = dup_mem(s->frequency, LE * sizeof(float));
        }
    }
}

void ep_routing_cfg_free(ep_routing_cfg *rc)
{
    if (!rc) return;
    free(rc->ban.layer_sensitivity);
    free(rc->des.median_ratio);
    for (int d = 0; d < rc->pick.n_domains; d++) {
        free(rc->pick.domains[d].key);
        free(rc->pick.domains[d].frequency);
    }
    free(rc->pick.domains);
    memset(rc, 0, sizeof *rc);
}

static bool domain_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(((ep_pick_domain *)0)->name)) return false;
    if (!strcmp(s, "auto") || !strcmp(s, "none")) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.' || ch == '+';
        if (!ok) return false;
    }
    return true;
}

int ep_routing_cfg_add_domain(ep_routing_cfg *rc, const char *name)
{
    EP_ASSERT(domain_name_ok(name) && ep_routing_cfg_find_domain(rc, name) < 0);
    int d = rc->pick.n_domains++;
    rc->pick.domains =
        ep_xrealloc(rc->pick.domains, (size_t)rc->pick.n_domains * sizeof(ep_pick_domain));
    ep_pick_domain *pd = &rc->pick.domains[d];
    memset(pd, 0, sizeof *pd);
    snprintf(pd->name, sizeof pd->name, "%s", name);
    pd->key = ep_xcalloc((size_t)rc->n_layers * rc->n_experts, 1);
    return d;
}

int ep_routing_cfg_find_domain(const ep_routing_cfg *rc, const char *name)
{
    for (int d = 0; d < rc->pick.n_domains; d++)
        if (!strcmp(rc->pick.domains[d].name, name)) return d;
    return -1;
}

// ---- validation of an in-memory config ------------------------------------

#define SRC(rc) ((rc)->source[0] ? (rc)->source : "routing config")

ep_status ep_routing_cfg_validate(const ep_routing_cfg *rc)
{
    const char *f = SRC(rc);
    if (rc->policy < 0 || rc->policy >= EP_POLICY_COUNT)
        return ep_errorf(EP_ERR_CONFIG, "%s: key 'policy': expected 0..%d, found %d", f,
                         EP_POLICY_COUNT - 1, (int)rc->policy);
    if (rc->n_layers < 1 || rc->n_experts < 1 || rc->k_base < 1 || rc->k_base > rc->n_experts ||
        rc->first_k_dense < 0 || rc->first_k_dense > rc->n_layers)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: model dimensions %d layers (first %d dense) x %d experts, top-%d are "
                         "inconsistent",
                         f, rc->n_layers, rc->first_k_dense, rc->n_experts, rc->k_base);
    if (rc->ban.k_min < 1 || rc->ban.k_min > rc->k_base)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'ban.k_min': expected an integer in [1, k_base = %d], found %d",
                         f, rc->k_base, rc->ban.k_min);
    if (!(rc->ban.lambda > 0.0f && rc->ban.lambda <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'ban.lambda': expected a number in (0, 1], found %g", f,
                         rc->ban.lambda);
    if (!(rc->ban.beta >= 0.0f && rc->ban.beta <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG, "%s: key 'ban.beta': expected a number in [0, 1], found %g",
                         f, rc->ban.beta);
    if (!(rc->ban.r_min >= 0.0f && rc->ban.r_min <= rc->ban.r_max && rc->ban.r_max <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: keys 'ban.r_min', 'ban.r_max': expected 0 <= r_min <= r_max <= 1, "
                         "found r_min %g, r_max %g",
                         f, rc->ban.r_min, rc->ban.r_max);
    if (rc->ban.locality < EP_BAN_LOC_OFF || rc->ban.locality > EP_BAN_LOC_NODE)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'ban.locality': expected false, rank or node, found %d", f,
                         (int)rc->ban.locality);
    if (!(rc->ban.locality_ratio > 0.0f && rc->ban.locality_ratio <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'ban.locality_ratio': expected a number in (0, 1], found %g", f,
                         rc->ban.locality_ratio);
    if (rc->ban.layer_sensitivity)
        for (int l = 0; l < rc->n_layers; l++)
            if (!isfinite(rc->ban.layer_sensitivity[l]))
                return ep_errorf(
                    EP_ERR_CONFIG,
                    "%s: key 'ban.layer_sensitivity[%d]': expected a finite number, found %g", f, l,
                    rc->ban.layer_sensitivity[l]);
    if (rc->pick.strategy < EP_PICK_A || rc->pick.strategy > EP_PICK_E)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'pick.strategy': expected A, B, C, D or E, found %d", f,
                         (int)rc->pick.strategy);
    if (rc->pick.range < 1 || rc->pick.range > rc->n_experts)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'pick.range': expected an integer in [1, %d], found %d", f,
                         rc->n_experts, rc->pick.range);
    if (rc->pick.domain < -1 || rc->pick.domain >= rc->pick.n_domains)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'pick.domain': expected one of %d domains, found index %d", f,
                         rc->pick.n_domains, rc->pick.domain);
    bool any_freq = false;
    for (int d = 0; d < rc->pick.n_domains; d++) {
        const ep_pick_domain *pd = &rc->pick.domains[d];
        if (!domain_name_ok(pd->name))
            return ep_errorf(
                EP_ERR_CONFIG,
                "%s: key 'pick.domains': expected a name of 1-63 characters [A-Za-z0-9_.+-] "
                "other than 'auto' or 'none', found '%s'",
                f, pd->name);
        if (ep_routing_cfg_find_domain(rc, pd->name) != d)
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: key 'pick.domains.%s': expected unique names, found it twice", f,
                             pd->name);
        for (int l = 0; l < rc->first_k_dense; l++)
            for (int e = 0; e < rc->n_experts; e++)
                if (pd->key[(size_t)l * rc->n_experts + e])
                    return ep_errorf(
                        EP_ERR_CONFIG,
                        "%s: key 'pick.domains.%s.key_experts.%d': expected a MoE layer "
                        "(>= %d), found dense layer %d",
                        f, pd->name, l, rc->first_k_dense, l);
        if (pd->frequency) {
            any_freq = true;
            for (size_t i = 0; i < (size_t)rc->n_layers * rc->n_experts; i++)
                if (!(isfinite(pd->frequency[i]) && pd->frequency[i] >= 0.0f))
                    return ep_errorf(
                        EP_ERR_CONFIG,
                        "%s: key 'pick.domains.%s.frequency[%zu][%zu]': expected a finite "
                        "number >= 0, found %g",
                        f, pd->name, i / rc->n_experts, i % rc->n_experts, pd->frequency[i]);
        }
    }
    if (rc->pick.domain_auto && !any_freq)
        return ep_errorf(
            EP_ERR_CONFIG,
            "%s: key 'pick.domain': 'auto' needs a domain with a 'frequency', found none "
            "among %d domains",
            f, rc->pick.n_domains);
    if (!(rc->topp.threshold > 0.0f && rc->topp.threshold <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'topp.threshold': expected a number in (0, 1], found %g", f,
                         rc->topp.threshold);
    if (rc->des.k_lo < 1 || rc->des.k_lo > rc->des.k_hi || rc->des.k_hi > rc->k_base)
        return ep_errorf(
            EP_ERR_CONFIG,
            "%s: keys 'des.k_lo', 'des.k_hi': expected 1 <= k_lo <= k_hi <= k_base = %d, "
            "found k_lo %d, k_hi %d",
            f, rc->k_base, rc->des.k_lo, rc->des.k_hi);
    if (rc->laser.after < 0 || rc->laser.after >= EP_POLICY_COUNT ||
        rc->laser.after == EP_POLICY_LASER)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'laser.after': expected a policy other than laser (baseline, "
                         "ban, pick, banpick, topp, des), found %d",
                         f, (int)rc->laser.after);
    if (!(isfinite(rc->laser.peak_ratio) && rc->laser.peak_ratio >= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'laser.peak_ratio': expected a finite number >= 1, found %g", f,
                         rc->laser.peak_ratio);
    if (!(rc->laser.widen_ratio > 0.0f && rc->laser.widen_ratio <= 1.0f))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'laser.widen_ratio': expected a number in (0, 1], found %g", f,
                         rc->laser.widen_ratio);
    if (rc->laser.keep_top < 0 || rc->laser.keep_top > rc->k_base)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'laser.keep_top': expected an integer in [0, k_base = %d], "
                         "found %d",
                         f, rc->k_base, rc->laser.keep_top);
    if (rc->des.median_ratio)
        for (int l = 0; l < rc->n_layers; l++)
            for (int j = 0; j < rc->k_base - 1; j++) {
                float v = rc->des.median_ratio[(size_t)l * (rc->k_base - 1) + j];
                if (!(isfinite(v) && v > 0.0f))
                    return ep_errorf(
                        EP_ERR_CONFIG,
                        "%s: key 'des.median_ratio[%d][%d]': expected a finite number > 0, "
                        "found %g",
                        f, l, j, v);
            }
    return EP_OK;
}

// ---- the YAML loader -------------------------------------------------------

typedef struct {
    char path[2200];
    char dir[1024]; // for relative `frequency` files
    yaml_document_t *doc;
    ep_routing_cfg *rc;
} yctx;

static yaml_node_t *ynode(yctx *c, int id)
{
    return yaml_document_get_node(c->doc, id);
}

static const char *yscalar(yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static int yline(yaml_node_t *n)
{
    return (int)n->start_mark.line + 1;
}

static void yfound(yaml_node_t *n, char *buf, size_t sz)
{
    if (!n)
        snprintf(buf, sz, "nothing");
    else if (n->type == YAML_SCALAR_NODE)
        snprintf(buf, sz, "'%.80s'", yscalar(n));
    else if (n->type == YAML_SEQUENCE_NODE)
        snprintf(buf, sz, "a list");
    else if (n->type == YAML_MAPPING_NODE)
        snprintf(buf, sz, "a mapping");
    else
        snprintf(buf, sz, "nothing");
}

static ep_status ybad(yctx *c, yaml_node_t *n, const char *key, const char *expected)
{
    char fb[128];
    yfound(n, fb, sizeof fb);
    return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %s", c->path,
                     n ? yline(n) : 0, key, expected, fb);
}

static bool yis_null(yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = yscalar(n);
    return !strcmp(s, "") || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

static bool yint(yaml_node_t *n, long *out)
{
    if (n->type != YAML_SCALAR_NODE) return false;
    const char *s = yscalar(n);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno) return false;
    *out = v;
    return true;
}

static bool ynum(yaml_node_t *n, double *out)
{
    if (n->type != YAML_SCALAR_NODE) return false;
    const char *s = yscalar(n);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool ybool(yaml_node_t *n, bool *out)
{
    if (n->type != YAML_SCALAR_NODE) return false;
    const char *s = yscalar(n);
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))
        *out = true;
    else if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
        *out = false;
    else
        return false;
    return true;
}

// Reads an integer in [lo, hi] (expected text given by the caller).
static ep_status yget_int(yctx *c, yaml_node_t *n, const char *key, long lo, long hi,
                          const char *expected, int *out)
{
    long v;
    if (!yint(n, &v) || v < lo || v > hi) return ybad(c, n, key, expected);
    *out = (int)v;
    return EP_OK;
}

typedef enum { R_OPEN_CLOSED, R_CLOSED_CLOSED } yrange;
static ep_status yget_unit(yctx *c, yaml_node_t *n, const char *key, yrange r, float *out)
{
    double v;
    bool ok = ynum(n, &v) && v <= 1.0 && (r == R_OPEN_CLOSED ? v > 0.0 : v >= 0.0);
    if (!ok)
        return ybad(c, n, key, r == R_OPEN_CLOSED ? "a number in (0, 1]" : "a number in [0, 1]");
    *out = (float)v;
    return EP_OK;
}

// ban.locality: false | true (= rank) | rank | node.
static ep_status yget_locality(yctx *c, yaml_node_t *n, ep_ban_locality *out)
{
    bool b;
    if (ybool(n, &b)) {
        *out = b ? EP_BAN_LOC_RANK : EP_BAN_LOC_OFF;
        return EP_OK;
    }
    const char *s = n->type == YAML_SCALAR_NODE ? yscalar(n) : "";
    for (int i = EP_BAN_LOC_RANK; i <= EP_BAN_LOC_NODE; i++)
        if (!strcmp(s, ban_locality_names[i])) {
            *out = (ep_ban_locality)i;
            return EP_OK;
        }
    return ybad(c, n, "ban.locality", "false, true (= rank), rank or node");
}

// Iterates the pairs of a mapping, rejecting non-scalar and repeated keys.
#define YMAP_FOR(c, map, kn, vn)                                                                   \
    for (yaml_node_pair_t *pr_ = (map)->data.mapping.pairs.start;                                  \
         pr_ < (map)->data.mapping.pairs.top &&                                                    \
         ((kn) = ynode((c), pr_->key), (vn) = ynode((c), pr_->value), 1);                          \
         pr_++)

static ep_status ycheck_keys(yctx *c, yaml_node_t *map, const char *section)
{
    for (yaml_node_pair_t *a = map->data.mapping.pairs.start; a < map->data.mapping.pairs.top;
         a++) {
        yaml_node_t *ka = ynode(c, a->key);
        if (ka->type != YAML_SCALAR_NODE) return ybad(c, ka, section, "scalar keys");
        for (yaml_node_pair_t *b = map->data.mapping.pairs.start; b < a; b++) {
            yaml_node_t *kb = ynode(c, b->key);
            if (!strcmp(yscalar(ka), yscalar(kb)))
                return ep_errorf(
                    EP_ERR_CONFIG,
                    "%s:%d: key '%s%s%s': expected once, found again (first on line %d)", c->path,
                    yline(ka), section, *section ? "." : "", yscalar(ka), yline(kb));
        }
    }
    return EP_OK;
}

static ep_status yunknown(yctx *c, yaml_node_t *k, const char *section, const char *known)
{
    return ep_errorf(EP_ERR_CONFIG, "%s:%d: unknown key '%s%s%s': expected one of %s", c->path,
                     yline(k), section, *section ? "." : "", yscalar(k), known);
}

static ep_status yneed_map(yctx *c, yaml_node_t *n, const char *key)
{
    if (n->type != YAML_MAPPING_NODE) return ybad(c, n, key, "a mapping");
    return ycheck_keys(c, n, key);
}

// A list of n_layers numbers (layer_sensitivity).
static ep_status yget_layer_list(yctx *c, yaml_node_t *n, const char *key, float **out)
{
    const ep_routing_cfg *rc = c->rc;
    char exp[96];
    snprintf(exp, sizeof exp, "a list of %d numbers (one per layer)", rc->n_layers);
    if (n->type != YAML_SEQUENCE_NODE) return ybad(c, n, key, exp);
    int len = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (len != rc->n_layers)
        return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %d entries", c->path,
                         yline(n), key, exp, len);
    float *v = ep_xmalloc((size_t)len * sizeof(float));
    for (int l = 0; l < len; l++) {
        yaml_node_t *it = ynode(c, n->data.sequence.items.start[l]);
        double d;
        if (!ynum(it, &d)) {
            free(v);
            char k2[128];
            snprintf(k2, sizeof k2, "%s[%d]", key, l);
            return ybad(c, it, k2, "a finite number");
        }
        v[l] = (float)d;
    }
    *out = v;
    return EP_OK;
}

// n_layers rows of `width` numbers each (frequency, median_ratio); a dense
// layer's row may be [] (then filled with `fill`). Values > lo_excl or >= 0.
static ep_status yget_matrix(yctx *c, yaml_node_t *n, const char *key, int width, bool positive,
                             float fill, float *out)
{
    const ep_routing_cfg *rc = c->rc;
    char exp[160], k2[160];
    snprintf(exp, sizeof exp, "a list of %d lists (one per layer) of %d numbers", rc->n_layers,
             width);
    if (n->type != YAML_SEQUENCE_NODE) return ybad(c, n, key, exp);
    int len = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (len != rc->n_layers)
        return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %d rows", c->path,
                         yline(n), key, exp, len);
    for (int l = 0; l < len; l++) {
        yaml_node_t *row = ynode(c, n->data.sequence.items.start[l]);
        snprintf(k2, sizeof k2, "%s[%d]", key, l);
        char rexp[96];
        snprintf(rexp, sizeof rexp, "a list of %d numbers%s", width,
                 l < rc->first_k_dense ? " (or [] for a dense layer)" : "");
        if (row->type != YAML_SEQUENCE_NODE) return ybad(c, row, k2, rexp);
        int w = (int)(row->data.sequence.items.top - row->data.sequence.items.start);
        float *dst = out + (size_t)l * width;
        if (w == 0 && l < rc->first_k_dense) {
            for (int j = 0; j < width; j++)
                dst[j] = fill;
            continue;
        }
        if (w != width)
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %d entries",
                             c->path, yline(row), k2, rexp, w);
        for (int j = 0; j < w; j++) {
            yaml_node_t *it = ynode(c, row->data.sequence.items.start[j]);
            double d;
            if (!ynum(it, &d) || (positive ? !(d > 0.0) : !(d >= 0.0))) {
                char k3[192];
                snprintf(k3, sizeof k3, "%s[%d]", k2, j);
                return ybad(c, it, k3, positive ? "a finite number > 0" : "a finite number >= 0");
            }
            dst[j] = (float)d;
        }
    }
    return EP_OK;
}

static ep_status load_doc(const char *path, yaml_document_t *doc, bool *have);

// `frequency`: inline rows, or a string naming a YAML file holding the rows
// (relative to the routing file's directory).
static ep_status yget_frequency(yctx *c, yaml_node_t *n, const char *key, float **out)
{
    size_t LE = (size_t)c->rc->n_layers * c->rc->n_experts;
    float *v = ep_xmalloc(LE * sizeof(float));
    ep_status st;
    if (n->type == YAML_SCALAR_NODE && !yis_null(n)) {
        char fpath[2100];
        const char *s = yscalar(n);
        if (s[0] == '/')
            snprintf(fpath, sizeof fpath, "%s", s);
        else
            snprintf(fpath, sizeof fpath, "%s/%s", c->dir, s);
        yaml_document_t sub;
        bool have = false;
        if ((st = load_doc(fpath, &sub, &have))) {
            free(v);
            return ep_error_prefix(st, "%s:%d: key '%s'", c->path, yline(n), key);
        }
        yctx sc = *c;
        snprintf(sc.path, sizeof sc.path, "%s", fpath);
        sc.doc = &sub;
        yaml_node_t *root = yaml_document_get_root_node(&sub);
        if (!root)
            st = ybad(&sc, NULL, key, "a list of per-layer lists");
        else
            st = yget_matrix(&sc, root, key, c->rc->n_experts, false, 0.0f, v);
        yaml_document_delete(&sub);
    } else {
        st = yget_matrix(c, n, key, c->rc->n_experts, false, 0.0f, v);
    }
    if (st) {
        free(v);
        return st;
    }
    *out = v;
    return EP_OK;
}

static ep_status parse_ban(yctx *c, yaml_node_t *map)
{
    ep_routing_cfg *rc = c->rc;
    ep_status st;
    if ((st = yneed_map(c, map, "ban"))) return st;
    yaml_node_t *k, *v;
    char exp[64];
    YMAP_FOR(c, map, k, v)
    {
        const char *key = yscalar(k);
        if (!strcmp(key, "k_min")) {
            snprintf(exp, sizeof exp, "an integer in [1, k_base = %d]", rc->k_base);
            st = yget_int(c, v, "ban.k_min", 1, rc->k_base, exp, &rc->ban.k_min);
        } else if (!strcmp(key, "lambda")) {
            st = yget_unit(c, v, "ban.lambda", R_OPEN_CLOSED, &rc->ban.lambda);
        } else if (!strcmp(key, "beta")) {
            st = yget_unit(c, v, "ban.beta", R_CLOSED_CLOSED, &rc->ban.beta);
        } else if (!strcmp(key, "r_min")) {
            st = yget_unit(c, v, "ban.r_min", R_CLOSED_CLOSED, &rc->ban.r_min);
        } else if (!strcmp(key, "r_max")) {
            st = yget_unit(c, v, "ban.r_max", R_CLOSED_CLOSED, &rc->ban.r_max);
        } else if (!strcmp(key, "layer_sensitivity")) {
            free(rc->ban.layer_sensitivity);
            rc->ban.layer_sensitivity = NULL;
            if (!yis_null(v))
                st = yget_layer_list(c, v, "ban.layer_sensitivity", &rc->ban.layer_sensitivity);
        } else if (!strcmp(key, "locality")) {
            st = yget_locality(c, v, &rc->ban.locality);
        } else if (!strcmp(key, "locality_ratio")) {
            st = yget_unit(c, v, "ban.locality_ratio", R_OPEN_CLOSED, &rc->ban.locality_ratio);
        } else {
            st = yunknown(
                c, k, "ban",
                "k_min, lambda, beta, r_min, r_max, layer_sensitivity, locality, locality_ratio");
        }
        if (st) return st;
    }
    return EP_OK;
}

static ep_status parse_key_experts(yctx *c, yaml_node_t *map, ep_pick_domain *pd, const char *dkey)
{
    ep_routing_cfg *rc = c->rc;
    char key[256], exp[128];
    snprintf(key, sizeof key, "%s.key_experts", dkey);
    ep_status st;
    if ((st = yneed_map(c, map, key))) return st;
    yaml_node_t *k, *v;
    YMAP_FOR(c, map, k, v)
    {
        int layer = 0;
        snprintf(exp, sizeof exp, "a MoE layer index in [%d, %d]", rc->first_k_dense,
                 rc->n_layers - 1);
        if ((st = yget_int(c, k, key, rc->first_k_dense, rc->n_layers - 1, exp, &layer))) return st;
        char lkey[300];
        snprintf(lkey, sizeof lkey, "%s.%d", key, layer);
        snprintf(exp, sizeof exp, "a list of expert ids in [0, %d]", rc->n_experts - 1);
        if (v->type != YAML_SEQUENCE_NODE) return ybad(c, v, lkey, exp);
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
             it++) {
            yaml_node_t *in = ynode(c, *it);
            int e = 0;
            snprintf(exp, sizeof exp, "an expert id in [0, %d]", rc->n_experts - 1);
            if ((st = yget_int(c, in, lkey, 0, rc->n_experts - 1, exp, &e))) return st;
            uint8_t *slot = &pd->key[(size_t)layer * rc->n_experts + e];
            if (*slot)
                return ep_errorf(EP_ERR_CONFIG,
                                 "%s:%d: key '%s': expected distinct expert ids, found %d twice",
                                 c->path, yline(in), lkey, e);
            *slot = 1;
        }
    }
    return EP_OK;
}

static ep_status parse_domains(yctx *c, yaml_node_t *map)
{
    ep_routing_cfg *rc = c->rc;
    ep_status st;
    if ((st = yneed_map(c, map, "pick.domains"))) return st;
    yaml_node_t *k, *v;
    YMAP_FOR(c, map, k, v)
    {
        const char *name = yscalar(k);
        if (!domain_name_ok(name))
            return ybad(
                c, k, "pick.domains",
                "a domain name of 1-63 characters [A-Za-z0-9_.+-] other than 'auto' or 'none'");
        char dkey[128];
        snprintf(dkey, sizeof dkey, "pick.domains.%s", name);
        int d = ep_routing_cfg_add_domain(rc, name);
        if ((st = yneed_map(c, v, dkey))) return st;
        yaml_node_t *k2, *v2;
        YMAP_FOR(c, v, k2, v2)
        {
            const char *key = yscalar(k2);
            ep_pick_domain *pd = &rc->pick.domains[d];
            char fkey[160];
            if (!strcmp(key, "key_experts")) {
                st = parse_key_experts(c, v2, pd, dkey);
            } else if (!strcmp(key, "frequency")) {
                snprintf(fkey, sizeof fkey, "%s.frequency", dkey);
                if (!yis_null(v2)) st = yget_frequency(c, v2, fkey, &pd->frequency);
            } else {
                st = yunknown(c, k2, dkey, "key_experts, frequency");
            }
            if (st) return st;
        }
    }
    return EP_OK;
}

static ep_status parse_pick(yctx *c, yaml_node_t *map)
{
    ep_routing_cfg *rc = c->rc;
    ep_status st;
    if ((st = yneed_map(c, map, "pick"))) return st;
    yaml_node_t *k, *v, *domain_node = NULL;
    YMAP_FOR(c, map, k, v)
    {
        const char *key = yscalar(k);
        st = EP_OK;
        if (!strcmp(key, "strategy")) {
            const char *s = v->type == YAML_SCALAR_NODE ? yscalar(v) : "";
            const char *at = s[0] && !s[1] ? strchr(pick_strategy_names, s[0]) : NULL;
            if (!at)
                st = ybad(c, v, "pick.strategy", "one of A, B, C, D, E");
            else
                rc->pick.strategy = (ep_pick_strategy)(at - pick_strategy_names);
        } else if (!strcmp(key, "range")) {
            char exp[64];
            snprintf(exp, sizeof exp, "an integer in [1, %d]", rc->n_experts);
            st = yget_int(c, v, "pick.range", 1, rc->n_experts, exp, &rc->pick.range);
        } else if (!strcmp(key, "domain")) {
            if (v->type != YAML_SCALAR_NODE)
                st = ybad(c, v, "pick.domain", "auto, none or a domain name");
            domain_node = v;
        } else if (!strcmp(key, "domains")) {
            st = parse_domains(c, v);
        } else {
            st = yunknown(c, k, "pick", "strategy, range, domain, domains");
        }
        if (st) return st;
    }
    // `domain` may come before `domains`: resolve it last.
    rc->pick.domain = rc->pick.n_domains > 0 ? 0 : -1;
    if (domain_node) {
        const char *s = yscalar(domain_node);
        if (!strcmp(s, "auto")) {
            rc->pick.domain_auto = true;
            rc->pick.domain = -1;
        } else if (!strcmp(s, "none")) {
            rc->pick.domain = -1;
        } else if ((rc->pick.domain = ep_routing_cfg_find_domain(rc, s)) < 0) {
            char exp[512] = "auto, none or one of the names under pick.domains (";
            for (int d = 0; d < rc->pick.n_domains; d++) {
                strncat(exp, rc->pick.domains[d].name, sizeof exp - strlen(exp) - 3);
                if (d + 1 < rc->pick.n_domains) strncat(exp, ", ", sizeof exp - strlen(exp) - 3);
            }
            strncat(exp, ")", sizeof exp - strlen(exp) - 1);
            return ybad(c, domain_node, "pick.domain", exp);
        }
    }
    return EP_OK;
}

static ep_status parse_topp(yctx *c, yaml_node_t *map)
{
    ep_status st;
    if ((st = yneed_map(c, map, "topp"))) return st;
    yaml_node_t *k, *v;
    YMAP_FOR(c, map, k, v)
    {
        if (!strcmp(yscalar(k), "threshold"))
            st = yget_unit(c, v, "topp.threshold", R_OPEN_CLOSED, &c->rc->topp.threshold);
        else
            st = yunknown(c, k, "topp", "threshold");
        if (st) return st;
    }
    return EP_OK;
}

static ep_status parse_des(yctx *c, yaml_node_t *map)
{
    ep_routing_cfg *rc = c->rc;
    ep_status st;
    if ((st = yneed_map(c, map, "des"))) return st;
    yaml_node_t *k, *v;
    char exp[64];
    snprintf(exp, sizeof exp, "an integer in [1, k_base = %d]", rc->k_base);
    YMAP_FOR(c, map, k, v)
    {
        const char *key = yscalar(k);
        st = EP_OK;
        if (!strcmp(key, "k_lo")) {
            st = yget_int(c, v, "des.k_lo", 1, rc->k_base, exp, &rc->des.k_lo);
        } else if (!strcmp(key, "k_hi")) {
            st = yget_int(c, v, "des.k_hi", 1, rc->k_base, exp, &rc->des.k_hi);
        } else if (!strcmp(key, "median_ratio")) {
            free(rc->des.median_ratio);
            rc->des.median_ratio = NULL;
            if (rc->k_base < 2) {
                if (!yis_null(v)) st = ybad(c, v, "des.median_ratio", "nothing for a top-1 model");
            } else if (!yis_null(v)) {
                rc->des.median_ratio =
                    ep_xmalloc((size_t)rc->n_layers * (rc->k_base - 1) * sizeof(float));
                st = yget_matrix(c, v, "des.median_ratio", rc->k_base - 1, true, 1.0f,
                                 rc->des.median_ratio);
            }
        } else {
            st = yunknown(c, k, "des", "k_lo, k_hi, median_ratio");
        }
        if (st) return st;
    }
    return EP_OK;
}

static ep_status parse_laser(yctx *c, yaml_node_t *map)
{
    ep_routing_cfg *rc = c->rc;
    ep_status st;
    if ((st = yneed_map(c, map, "laser"))) return st;
    yaml_node_t *k, *v;
    YMAP_FOR(c, map, k, v)
    {
        const char *key = yscalar(k);
        st = EP_OK;
        if (!strcmp(key, "after")) {
            ep_policy_kind kind;
            if (v->type != YAML_SCALAR_NODE || ep_policy_kind_parse(yscalar(v), &kind) ||
                kind == EP_POLICY_LASER) {
                ep_clear_error();
                st = ybad(c, v, "laser.after",
                          "one of baseline, ban, pick, banpick, topp, des (not laser)");
            } else {
                rc->laser.after = kind;
            }
        } else if (!strcmp(key, "peak_ratio")) {
            double d;
            if (!ynum(v, &d) || !(d >= 1.0))
                st = ybad(c, v, "laser.peak_ratio", "a finite number >= 1");
            else
                rc->laser.peak_ratio = (float)d;
        } else if (!strcmp(key, "widen_ratio")) {
            st = yget_unit(c, v, "laser.widen_ratio", R_OPEN_CLOSED, &rc->laser.widen_ratio);
        } else if (!strcmp(key, "keep_top")) {
            char exp[64];
            snprintf(exp, sizeof exp, "an integer in [0, k_base = %d]", rc->k_base);
            st = yget_int(c, v, "laser.keep_top", 0, rc->k_base, exp, &rc->laser.keep_top);
        } else {
            st = yunknown(c, k, "laser", "after, peak_ratio, widen_ratio, keep_top");
        }
        if (st) return st;
    }
    return EP_OK;
}

static ep_status load_doc(const char *path, yaml_document_t *doc, bool *have)
{
    *have = false;
    FILE *f = fopen(path, "rb");
    if (!f) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    ep_status st = EP_OK;
    if (!yaml_parser_load(&parser, doc)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s:%d:%d: YAML syntax error: %s %s", path,
                       (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1,
                       parser.problem ? parser.problem : "", parser.context ? parser.context : "");
    } else {
        *have = true;
    }
    yaml_parser_delete(&parser);
    fclose(f);
    return st;
}

ep_status ep_routing_cfg_load(const char *path, const ep_model_cfg *m, ep_routing_cfg *rc)
{
    memset(rc, 0, sizeof *rc);
    yaml_document_t doc;
    bool have = false;
    ep_status st = load_doc(path, &doc, &have);
    if (st) return st;
    yctx c = {.doc = &doc, .rc = rc};
    snprintf(c.path, sizeof c.path, "%s", path);
    snprintf(c.dir, sizeof c.dir, "%s", path);
    char *slash = strrchr(c.dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(c.dir, sizeof c.dir, ".");

    yaml_node_t *root = yaml_document_get_root_node(&doc);
    yaml_node_t *k, *v, *pol = NULL;
    if (!root) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s: expected a mapping with at least 'policy', found an empty document",
                       path);
        goto out;
    }
    if (root->type != YAML_MAPPING_NODE) {
        st = ybad(&c, root, "(top level)", "a mapping");
        goto out;
    }
    if ((st = ycheck_keys(&c, root, ""))) goto out;
    // `policy` first: the defaults of the other sections depend on it.
    YMAP_FOR(&c, root, k, v)
    {
        if (!strcmp(yscalar(k), "policy")) pol = v;
    }
    if (!pol) {
        st = ep_errorf(
            EP_ERR_CONFIG,
            "%s: key 'policy' missing: expected one of baseline, ban, pick, banpick, topp, des, "
            "laser",
            path);
        goto out;
    }
    ep_policy_kind kind = EP_POLICY_BASELINE;
    if (pol->type != YAML_SCALAR_NODE || ep_policy_kind_parse(yscalar(pol), &kind)) {
        ep_clear_error();
        st = ybad(&c, pol, "policy", "one of baseline, ban, pick, banpick, topp, des, laser");
        goto out;
    }
    ep_routing_cfg_default(rc, m, kind);
    snprintf(rc->source, sizeof rc->source, "%s", path);
    YMAP_FOR(&c, root, k, v)
    {
        const char *key = yscalar(k);
        if (!strcmp(key, "policy")) continue;
        if (!strcmp(key, "ban"))
            st = parse_ban(&c, v);
        else if (!strcmp(key, "pick"))
            st = parse_pick(&c, v);
        else if (!strcmp(key, "topp"))
            st = parse_topp(&c, v);
        else if (!strcmp(key, "des"))
            st = parse_des(&c, v);
        else if (!strcmp(key, "laser"))
            st = parse_laser(&c, v);
        else
            st = yunknown(&c, k, "", "policy, ban, pick, topp, des, laser");
        if (st) goto out;
    }
    st = ep_routing_cfg_validate(rc);
out:
    yaml_document_delete(&doc);
    if (st) ep_routing_cfg_free(rc);
    return st;
}

// ---- the writer ------------------------------------------------------------

static void write_row(FILE *f, const float *v, int n)
{
    fputc('[', f);
    for (int j = 0; j < n; j++)
        fprintf(f, "%s%.9g", j ? ", " : "", v[j]);
    fputc(']', f);
}

static void write_yaml(FILE *f, const ep_routing_cfg *rc, const ep_model_cfg *m)
{
    const int L = rc->n_layers, E = rc->n_experts;
    fprintf(
        f, "# epserve routing config for %s (%d layers, %d experts, top-%d); see docs/routing.md\n",
        m->name[0] ? m->name : "(unnamed model)", L, E, rc->k_base);
    fprintf(f, "policy: %s\n", ep_policy_kind_name(rc->policy));
    fprintf(f, "ban:\n  k_min: %d\n  lambda: %.9g\n  beta: %.9g\n  r_min: %.9g\n  r_max: %.9g\n",
            rc->ban.k_min, rc->ban.lambda, rc->ban.beta, rc->ban.r_min, rc->ban.r_max);
    if (rc->ban.layer_sensitivity) {
        fprintf(f, "  layer_sensitivity: ");
        write_row(f, rc->ban.layer_sensitivity, L);
        fputc('\n', f);
    }
    fprintf(f, "  locality: %s\n  locality_ratio: %.9g\n", ban_locality_names[rc->ban.locality],
            rc->ban.locality_ratio);
    fprintf(f, "pick:\n  strategy: %c\n  range: %d\n", pick_strategy_names[rc->pick.strategy],
            rc->pick.range);
    if (rc->pick.domain_auto)
        fprintf(f, "  domain: auto\n");
    else if (rc->pick.domain >= 0)
        fprintf(f, "  domain: %s\n", rc->pick.domains[rc->pick.domain].name);
    else if (rc->pick.n_domains > 0)
        fprintf(f, "  domain: none\n");
    if (rc->pick.n_domains > 0) {
        fprintf(f, "  domains:\n");
        for (int d = 0; d < rc->pick.n_domains; d++) {
            const ep_pick_domain *pd = &rc->pick.domains[d];
            fprintf(f, "    %s:\n      key_experts: {", pd->name);
            bool first = true;
            for (int l = 0; l < L; l++) {
                int n = 0;
                for (int e = 0; e < E; e++) {
                    if (!pd->key[(size_t)l * E + e]) continue;
                    if (n++ == 0)
                        fprintf(f, "%s%d: [", first ? "" : ", ", l);
                    else
                        fprintf(f, ", ");
                    fprintf(f, "%d", e);
                }
                if (n) {
                    fputc(']', f);
                    first = false;
                }
            }
            fprintf(f, "}\n");
            if (pd->frequency) {
                fprintf(f, "      frequency:\n");
                for (int l = 0; l < L; l++) {
                    fprintf(f, "        - ");
                    write_row(f, pd->frequency + (size_t)l * E, E);
                    fputc('\n', f);
                }
            }
        }
    }
    fprintf(f, "topp:\n  threshold: %.9g\n", rc->topp.threshold);
    fprintf(f, "des:\n  k_lo: %d\n  k_hi: %d\n", rc->des.k_lo, rc->des.k_hi);
    if (rc->des.median_ratio) {
        fprintf(f, "  median_ratio:\n");
        for (int l = 0; l < L; l++) {
            fprintf(f, "    - ");
            write_row(f, rc->des.median_ratio + (size_t)l * (rc->k_base - 1), rc->k_base - 1);
            fputc('\n', f);
        }
    }
    fprintf(f, "laser:\n  after: %s\n  peak_ratio: %.9g\n  widen_ratio: %.9g\n  keep_top: %d\n",
            ep_policy_kind_name(rc->laser.after), rc->laser.peak_ratio, rc->laser.widen_ratio,
            rc->laser.keep_top);
}

ep_status ep_routing_cfg_write(const ep_routing_cfg *rc, const ep_model_cfg *m, const char *path)
{
    ep_status st = ep_routing_cfg_validate(rc);
    if (st) return ep_error_prefix(st, "%s: refusing to write", path);
    if (rc->n_layers != m->n_layers || rc->n_experts != m->n_experts || rc->k_base != m->k_base)
        return ep_errorf(EP_ERR_ARG,
                         "%s: routing config is for %d layers x %d experts, top-%d; model %s has "
                         "%d x %d, top-%d",
                         path, rc->n_layers, rc->n_experts, rc->k_base, m->name, m->n_layers,
                         m->n_experts, m->k_base);
    char tmp[1200];
    FILE *f;
    if (strlen(path) + 16 > sizeof tmp)
        return ep_errorf(EP_ERR_ARG, "%s: path too long (max %zu)", path, sizeof tmp - 16);
    if ((st = ep_file_atomic_open(path, tmp, sizeof tmp, &f))) return st;
    write_yaml(f, rc, m);
    return ep_file_atomic_commit(f, tmp, path, true);
}
