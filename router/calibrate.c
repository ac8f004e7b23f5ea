// The pure parts of `epserve calibrate`: the JSON-lines data reader, the
// top-N restricted KL, the calibration policy and its recorder, DES's medians,
// the key-expert choice and the assembly of the banpick profile. Running the model over the
// data (and MPI) is model/calibrate.c; the command line is app/calibrate.c.
#include "router/calibrate.h"
#include "common/dtype.h"
#include "common/json_util.h"

#include <errno.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- calibration data ------------------------------------------------------

// The routing YAML's rule for domain names (docs/routing.md §5).
static bool calib_domain_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || !strcmp(s, "auto") || !strcmp(s, "none")) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '+' || c == '-';
        if (!ok) return false;
    }
    return true;
}

static int calib_domain_index(ep_calib_data *d, const char *name)
{
    for (int i = 0; i < d->n_domains; i++)
        if (!strcmp(d->names[i], name)) return i;
    d->names = ep_xrealloc(d->names, (size_t)(d->n_domains + 1) * sizeof *d->names);
    snprintf(d->names[d->n_domains], sizeof d->names[0], "%s", name);
    return d->n_domains++;
}

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return false;
    return true;
}

// Parses one line into d (appending); returns an error naming path:lineno.
static ep_status parse_line(const char *path, int lineno, const char *line, int vocab,
                            const char *def_domain, ep_calib_data *d, size_t *cap_tok,
                            size_t *cap_seq)
{
    json_error_t jerr;
    json_t *root = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
    ep_status st = EP_OK;
    if (!root)
        return ep_errorf(EP_ERR_FORMAT, "%s:%d: expected a JSON object, found invalid JSON (%s)",
                         path, lineno, jerr.text);
    if (!json_is_object(root)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s:%d: expected a JSON object, found %s", path, lineno,
                       ep_json_type_name(root));
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "tokens") && strcmp(key, "domain")) {
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s:%d: unknown key '%s' (expected \"tokens\" and "
                           "optionally \"domain\")",
                           path, lineno, key);
            goto out;
        }
    }
    const char *dom = def_domain;
    json_t *jd = json_object_get(root, "domain");
    if (jd) {
        if (!json_is_string(jd)) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%d: key 'domain': expected a string, found %s", path,
                           lineno, ep_json_type_name(jd));
            goto out;
        }
        dom = json_string_value(jd);
    }
    if (!calib_domain_name_ok(dom)) {
        st = ep_errorf(EP_ERR_FORMAT,
                       "%s:%d: key 'domain': expected 1-63 characters of [A-Za-z0-9_.+-], not "
                       "'auto' or 'none', found '%s'",
                       path, lineno, dom);
        goto out;
    }
    json_t *jt = json_object_get(root, "tokens");
    if (!jt || !json_is_array(jt) || json_array_size(jt) == 0) {
        st = ep_errorf(EP_ERR_FORMAT,
                       "%s:%d: key 'tokens': expected a non-empty array of token "
                       "ids, found %s",
                       path, lineno, !jt ? "no such key" : ep_json_type_name(jt));
        goto out;
    }
    size_t n = json_array_size(jt), base = (size_t)d->off[d->n_seqs];
    if (n > (size_t)1 << 24) {
        st = ep_errorf(EP_ERR_FORMAT, "%s:%d: key 'tokens': expected at most %d ids, found %zu",
                       path, lineno, 1 << 24, n);
        goto out;
    }
    while (base + n > *cap_tok) {
        *cap_tok = *cap_tok ? 2 * *cap_tok : 1024;
        d->tokens = ep_xrealloc(d->tokens, *cap_tok * sizeof(int));
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(jt, i);
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (!json_is_integer(v) || id < 0 || id >= vocab) {
            char found[64];
            if (json_is_integer(v))
                snprintf(found, sizeof found, "%lld", (long long)id);
            else
                snprintf(found, sizeof found, "%s", ep_json_type_name(v));
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s:%d: tokens[%zu]: expected a token id in [0, %d), found %s", path,
                           lineno, i, vocab, found);
            goto out;
        }
        d->tokens[base + i] = (int)id;
    }
    if ((size_t)d->n_seqs + 2 > *cap_seq) {
        *cap_seq = *cap_seq ? 2 * *cap_seq : 64;
        d->off = ep_xrealloc(d->off, *cap_seq * sizeof(int));
        d->domain = ep_xrealloc(d->domain, *cap_seq * sizeof(int));
    }
    d->domain[d->n_seqs] = calib_domain_index(d, dom);
    d->off[d->n_seqs + 1] = (int)(base + n);
    d->n_seqs++;
    d->max_len = EP_MAX(d->max_len, (int)n);
out:
    json_decref(root);
    return st;
}

ep_status ep_calib_data_load(const char *path, int vocab, const char *default_domain,
                             ep_calib_data *d)
{
    memset(d, 0, sizeof *d);
    const char *def = default_domain ? default_domain : "general";
    if (!calib_domain_name_ok(def))
        return ep_errorf(EP_ERR_ARG,
                         "default domain: expected 1-63 characters of [A-Za-z0-9_.+-], not 'auto' "
                         "or 'none', found '%s'",
                         def);
    FILE *f = fopen(path, "r");
    if (!f)
        return ep_errorf(EP_ERR_IO, "%s: cannot open calibration data: %s", path, strerror(errno));
    size_t cap_tok = 0, cap_seq = 64;
    d->off = ep_xcalloc(cap_seq, sizeof(int));
    d->domain = ep_xcalloc(cap_seq, sizeof(int));
    char *line = NULL;
    size_t lcap = 0;
    ep_status st = EP_OK;
    int lineno = 0;
    while (getline(&line, &lcap, f) != -1) {
        lineno++;
        if (blank(line)) continue;
        if ((st = parse_line(path, lineno, line, vocab, def, d, &cap_tok, &cap_seq))) break;
    }
    if (!st && ferror(f)) st = ep_errorf(EP_ERR_IO, "%s: read error: %s", path, strerror(errno));
    free(line);
    fclose(f);
    if (!st && d->n_seqs == 0)
        st = ep_errorf(EP_ERR_FORMAT, "%s: expected at least one sequence, found none", path);
    if (st) ep_calib_data_free(d);
    return st;
}

void ep_calib_data_free(ep_calib_data *d)
{
    if (!d) return;
    free(d->off);
    free(d->tokens);
    free(d->domain);
    free(d->names);
    memset(d, 0, sizeof *d);
}

// ---- restricted KL ----------------------------------------------------------

typedef struct {
    float v;
    int i;
} calib_pair;

static int pair_cmp(const void *a, const void *b)
{
    const calib_pair *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

int ep_calib_top_tokens(const float *logits, int V, int n, int *idx)
{
    n = EP_MIN(n, V);
    calib_pair *p = ep_xmalloc((size_t)V * sizeof *p);
    for (int i = 0; i < V; i++)
        p[i] = (calib_pair){logits[i], i};
    qsort(p, (size_t)V, sizeof *p, pair_cmp);
    for (int j = 0; j < n; j++)
        idx[j] = p[j].i;
    free(p);
    return n;
}

// log sum exp of v(j), j < n, with the max taken out (no overflow).
static double lse(const float *p_sel, const float *q_logits, const int *idx, int n)
{
    double mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        double v = p_sel ? p_sel[j] : q_logits[idx[j]];
        if (v > mx) mx = v;
    }
    double s = 0.0;
    for (int j = 0; j < n; j++)
        s += exp((p_sel ? p_sel[j] : q_logits[idx[j]]) - mx);
    return mx + log(s);
}

double ep_calib_kl_sel(const float *p_sel, const float *q_logits, const int *idx, int n)
{
    double lp = lse(p_sel, NULL, NULL, n), lq = lse(NULL, q_logits, idx, n);
    double kl = 0.0;
    for (int j = 0; j < n; j++) {
        double logp = p_sel[j] - lp, logq = q_logits[idx[j]] - lq;
        kl += exp(logp) * (logp - logq);
    }
    // Rounding can leave a tiny negative for (near-)identical inputs.
    return kl > 0.0 ? kl : 0.0;
}

double ep_calib_kl_topn(const float *p_logits, const float *q_logits, int V, int top_n, int *idx)
{
    int n = ep_calib_top_tokens(p_logits, V, top_n, idx);
    float *sel = ep_xmalloc((size_t)n * sizeof(float));
    for (int j = 0; j < n; j++)
        sel[j] = p_logits[idx[j]];
    double kl = ep_calib_kl_sel(sel, q_logits, idx, n);
    free(sel);
    return kl;
}

// ---- the calibration policy ---------------------------------------------------

void ep_calib_record_init(ep_calib_record *r, int n_layers, int n_experts, int k_base,
                          int n_domains)
{
    memset(r, 0, sizeof *r);
    r->n_layers = n_layers;
    r->n_experts = n_experts;
    r->k_base = k_base;
    r->n_domains = n_domains;
    r->r_min = INFINITY;
    r->r_max = -INFINITY;
    r->count = ep_xcalloc((size_t)n_domains * n_layers * n_experts, sizeof(int64_t));
    r->tokens = ep_xcalloc((size_t)n_domains * n_layers, sizeof(int64_t));
    r->ratio = ep_xcalloc((size_t)n_layers, sizeof *r->ratio);
    r->n_ratio = ep_xcalloc((size_t)n_layers, sizeof(int64_t));
    r->cap_ratio = ep_xcalloc((size_t)n_layers, sizeof(int64_t));
}

void ep_calib_record_free(ep_calib_record *r)
{
    if (!r) return;
    free(r->count);
    free(r->tokens);
    for (int l = 0; r->ratio && l < r->n_layers; l++)
        free(r->ratio[l]);
    free(r->ratio);
    free(r->n_ratio);
    free(r->cap_ratio);
    memset(r, 0, sizeof *r);
}

// Appends one token's r_(j)/r_(j+1), j = 1..k_base-1, at its layer. The
// division is DES's own (double, a zero denominator is +inf), rounded to the
// fp32 the profile stores.
static void record_ratios(ep_calib_record *rec, const ep_policy_token *t)
{
    const int w = rec->k_base - 1;
    if (w < 1 || t->n_cand < rec->k_base) return;
    int l = t->layer;
    if (rec->n_ratio[l] == rec->cap_ratio[l]) {
        rec->cap_ratio[l] = rec->cap_ratio[l] ? 2 * rec->cap_ratio[l] : 256;
        rec->ratio[l] = ep_xrealloc(rec->ratio[l], (size_t)rec->cap_ratio[l] * w * sizeof(float));
    }
    float *out = rec->ratio[l] + (size_t)rec->n_ratio[l]++ * w;
    for (int j = 1; j <= w; j++) {
        float a = t->cand_score[j - 1], b = t->cand_score[j];
        double v = b > 0.0f ? (double)a / b : INFINITY;
        // NaN scores (a broken model) sort as +inf: the bisection needs an order.
        out[j - 1] = isnan(v) ? INFINITY : (float)v;
    }
}

static int calib_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    const ep_calib_policy *cp = (const ep_calib_policy *)p;
    int K = t->k_base;
    bool here = t->layer == cp->layer;
    if (here) K = EP_MIN(cp->k, t->n_cand);
    memcpy(kept, t->cand, (size_t)K * sizeof(int));
    if (here && cp->drop >= 0) {
        int j = 0;
        while (j < K && kept[j] != cp->drop)
            j++;
        if (j < K) {
            memmove(kept + j, kept + j + 1, (size_t)(K - j - 1) * sizeof(int));
            K--;
        }
        // k_base 1 (or k 1) and the dropped expert was the only one kept.
        if (K == 0) {
            EP_ASSERT(t->n_cand > 1);
            kept[K++] = t->cand[0] == cp->drop ? t->cand[1] : t->cand[0];
        }
    }
    ep_calib_record *rec = cp->rec;
    if (rec) {
        float R;
        ep_ban_k(&p->cfg, 0.0f, t->cand_score, t->n_cand, &R, NULL);
        if (R < rec->r_min) rec->r_min = R;
        if (R > rec->r_max) rec->r_max = R;
        size_t dl = (size_t)rec->domain * rec->n_layers + t->layer;
        rec->tokens[dl]++;
        for (int j = 0; j < K; j++)
            rec->count[dl * rec->n_experts + kept[j]]++;
        record_ratios(rec, t);
    }
    return K;
}

static const ep_policy_vtable ep_calib_policy_vt = {
    .name = "calibrate",
    .select = calib_select,
};

void ep_calib_policy_init(ep_calib_policy *cp, const ep_model_cfg *m)
{
    memset(cp, 0, sizeof *cp);
    cp->base.vt = &ep_calib_policy_vt;
    ep_routing_cfg_default(&cp->base.cfg, m, EP_POLICY_BASELINE);
    cp->base.params.max_k = m->k_base;
    cp->layer = -1;
    cp->k = m->k_base;
    cp->drop = -1;
}

void ep_calib_policy_free(ep_calib_policy *cp)
{
    if (!cp) return;
    ep_routing_cfg_free(&cp->base.cfg);
    memset(cp, 0, sizeof *cp);
}

void ep_calib_policy_set(ep_calib_policy *cp, int layer, int k, int drop)
{
    EP_ASSERT(k >= 1 && k <= cp->base.cfg.k_base);
    EP_ASSERT(drop < cp->base.cfg.n_experts);
    EP_ASSERT(drop < 0 || cp->base.cfg.n_experts > 1);
    cp->layer = layer;
    cp->k = k;
    cp->drop = drop;
}

// ---- DES medians ----------------------------------------------------------------

ep_status ep_calib_des_medians(const ep_calib_record *rec, ep_calib_sum_fn sum, void *ctx,
                               float *median)
{
    const int L = rec->n_layers, w = rec->k_base - 1;
    EP_ASSERT(w >= 1);
    const size_t P = (size_t)L * w; // one median per (layer, j)
    int64_t *n = ep_xmalloc((size_t)L * sizeof(int64_t));
    memcpy(n, rec->n_ratio, (size_t)L * sizeof(int64_t));
    // The two order statistics of each median, 0-based: (n-1)/2 and n/2.
    uint32_t *lo = ep_xmalloc(2 * P * sizeof(uint32_t)), *hi = ep_xmalloc(2 * P * sizeof(uint32_t));
    int64_t *cnt = ep_xmalloc(2 * P * sizeof(int64_t));
    ep_status st = sum ? sum(ctx, n, L) : EP_OK;
    for (size_t q = 0; q < 2 * P; q++)
        lo[q] = 0, hi[q] = ep_f32_bits(INFINITY);
    // Non-negative floats (+inf included) order as their bit patterns do.
    // Invariant: the wanted value's bits lie in [lo, hi]. The range holds
    // fewer than 2^31 patterns, so 31 halvings leave one; every rank runs all
    // of them, so the sums line up.
    for (int step = 0; step < 31 && !st; step++) {
        memset(cnt, 0, 2 * P * sizeof(int64_t));
        for (int l = 0; l < L; l++) {
            const float *v = rec->ratio[l];
            for (int j = 0; j < w; j++) {
                size_t q = 2 * ((size_t)l * w + j);
                uint32_t mid0 = lo[q] + (hi[q] - lo[q]) / 2;
                uint32_t mid1 = lo[q + 1] + (hi[q + 1] - lo[q + 1]) / 2;
                for (int64_t t = 0; t < rec->n_ratio[l]; t++) {
                    uint32_t b = ep_f32_bits(v[(size_t)t * w + j]);
                    cnt[q] += b <= mid0;
                    cnt[q + 1] += b <= mid1;
                }
            }
        }
        if (sum) st = sum(ctx, cnt, (int)(2 * P));
        for (size_t q = 0; q < 2 * P && !st; q++) {
            int64_t nl = n[q / 2 / w];
            int64_t k = q % 2 ? nl / 2 : (nl - 1) / 2; // the order statistic wanted
            uint32_t mid = lo[q] + (hi[q] - lo[q]) / 2;
            if (cnt[q] >= k + 1)
                hi[q] = mid;
            else
                lo[q] = mid + 1;
        }
    }
    for (size_t p = 0; p < P && !st; p++) {
        if (n[p / w] == 0) { // no token: DES's default
            median[p] = 1.0f;
            continue;
        }
        double m = 0.5 * ((double)ep_bits_f32(lo[2 * p]) + (double)ep_bits_f32(lo[2 * p + 1]));
        median[p] = isinf(m) ? FLT_MAX : (float)m;
    }
    free(n);
    free(lo);
    free(hi);
    free(cnt);
    return st;
}

// ---- key experts --------------------------------------------------------------

int ep_calib_frequent(const int64_t *count, int n_experts, int m, int *out)
{
    // m is small: m passes of a strict ">" scan keep the lower id on ties.
    int n = 0;
    for (; n < m; n++) {
        int best = -1;
        for (int e = 0; e < n_experts; e++) {
            if (count[e] <= 0) continue;
            bool taken = false;
            for (int j = 0; j < n && !taken; j++)
                taken = out[j] == e;
            if (!taken && (best < 0 || count[e] > count[best])) best = e;
        }
        if (best < 0) break;
        out[n] = best;
    }
    return n;
}

static int key_cmp(const void *a, const void *b)
{
    const ep_calib_key_cand *x = a, *y = b;
    if (x->kl != y->kl) return x->kl > y->kl ? -1 : 1;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return (x->expert > y->expert) - (x->expert < y->expert);
}

int ep_calib_choose_keys(ep_calib_key_cand *cands, int n, int top_n)
{
    if (n <= 0) return 0;
    qsort(cands, (size_t)n, sizeof *cands, key_cmp);
    int k = 0;
    for (int i = 0; i < n && k < top_n; i++) {
        if (!(cands[i].kl > 0.0)) break; // sorted: the rest changes nothing either
        bool layer_taken = false;
        for (int j = 0; j < k; j++)
            layer_taken |= cands[j].layer == cands[i].layer;
        if (layer_taken) continue;
        ep_calib_key_cand c = cands[i];
        memmove(cands + k + 1, cands + k, (size_t)(i - k) * sizeof *cands);
        cands[k++] = c;
    }
    return k;
}

// ---- the profile --------------------------------------------------------------

ep_status ep_calib_build_cfg(const ep_model_cfg *m, const ep_calib_result *res, ep_routing_cfg *rc)
{
    const int L = m->n_layers, E = m->n_experts;
    const ep_calib_record *rec = res->rec;
    EP_ASSERT(rec->n_layers == L && rec->n_experts == E);
    ep_routing_cfg_default(rc, m, EP_POLICY_BANPICK);
    if (res->k_min < 1 || res->k_min > m->k_base) {
        ep_routing_cfg_free(rc);
        return ep_errorf(EP_ERR_ARG, "calibrate: k_min: expected 1..%d (k_base of %s), found %d",
                         m->k_base, m->name, res->k_min);
    }
    rc->ban.k_min = res->k_min;
    // No token recorded (cannot happen with data) leaves the defaults.
    if (res->r_min <= res->r_max) {
        rc->ban.r_min = (float)res->r_min;
        rc->ban.r_max = (float)res->r_max;
    }
    rc->ban.layer_sensitivity = ep_xcalloc((size_t)L, sizeof(float));
    for (int l = m->first_k_dense; l < L; l++)
        rc->ban.layer_sensitivity[l] = (float)res->w[l];
    for (int d = 0; d < rec->n_domains; d++) {
        int di = ep_routing_cfg_add_domain(rc, res->names[d]);
        ep_pick_domain *pd = &rc->pick.domains[di];
        pd->frequency = ep_xcalloc((size_t)L * E, sizeof(float));
        for (int l = m->first_k_dense; l < L; l++) {
            size_t dl = (size_t)d * L + l;
            if (rec->tokens[dl] == 0) continue;
            for (int e = 0; e < E; e++)
                pd->frequency[(size_t)l * E + e] =
                    (float)((double)rec->count[dl * E + e] / (double)rec->tokens[dl]);
        }
        for (int k = 0; k < res->n_keys[d]; k++) {
            const ep_calib_key_cand *c = &res->keys[d][k];
            pd->key[(size_t)c->layer * E + c->expert] = 1;
        }
    }
    if (res->des_median && m->k_base > 1) {
        size_t n = (size_t)L * (m->k_base - 1);
        rc->des.median_ratio = ep_xmalloc(n * sizeof(float));
        memcpy(rc->des.median_ratio, res->des_median, n * sizeof(float));
    }
    rc->pick.domain = -1;
    rc->pick.domain_auto = false;
    ep_status st = EP_OK;
    if (res->active) {
        rc->pick.domain = ep_routing_cfg_find_domain(rc, res->active);
        if (rc->pick.domain < 0)
            st = ep_errorf(EP_ERR_ARG,
                           "calibrate: --domain '%s': expected one of the %d domains in the data, "
                           "found none of that name",
                           res->active, rc->pick.n_domains);
    } else if (rc->pick.n_domains == 1 && !res->auto_domain) {
        rc->pick.domain = 0;
    } else {
        rc->pick.domain_auto = true;
    }
    if (!st) st = ep_routing_cfg_validate(rc);
    if (st) ep_routing_cfg_free(rc);
    return st;
}

ep_status ep_calib_write(const ep_routing_cfg *rc, const ep_model_cfg *m, const char *header,
                         const char *path)
{
    // The body goes through the routing writer (so it is exactly what the
    // loader reads back), then header + body replace path atomically.
    char body[1200], tmp[1200];
    if (strlen(path) + 24 > sizeof body)
        return ep_errorf(EP_ERR_ARG, "%s: path too long (max %zu)", path, sizeof body - 24);
    snprintf(body, sizeof body, "%s.body.%ld", path, (long)getpid());
    ep_status st = ep_routing_cfg_write(rc, m, body);
    if (st) return st;
    FILE *in = fopen(body, "rb");
    if (!in) {
        st = ep_errorf(EP_ERR_IO, "%s: cannot reopen: %s", body, strerror(errno));
        remove(body);
        return st;
    }
    FILE *out;
    if ((st = ep_file_atomic_open(path, tmp, sizeof tmp, &out))) {
        fclose(in);
        remove(body);
        return st;
    }
    bool ok = fputs(header, out) >= 0;
    char buf[8192];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    remove(body);
    return ep_file_atomic_commit(out, tmp, path, ok);
}
