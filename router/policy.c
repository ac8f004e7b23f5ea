// Policy instances: the table of policy kinds, creation from a name or a
// routing YAML, the parameters derived once (Ban's layer term, Pick's key
// lists, max K), the automatic Pick domain. No per-token work lives here:
// that is each policy_*.c's select.
#include "router/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// One entry per policy kind; a new policy is a new file and a row here.
static const ep_policy_vtable *const ep_policy_table[EP_POLICY_COUNT] = {
    [EP_POLICY_BASELINE] = &ep_policy_baseline_vt, [EP_POLICY_BAN] = &ep_policy_ban_vt,
    [EP_POLICY_PICK] = &ep_policy_pick_vt,         [EP_POLICY_BANPICK] = &ep_policy_banpick_vt,
    [EP_POLICY_TOPP] = &ep_policy_topp_vt,         [EP_POLICY_DES] = &ep_policy_des_vt,
    [EP_POLICY_LASER] = &ep_policy_laser_vt,
};

const char *ep_policy_kind_name(ep_policy_kind k)
{
    EP_ASSERT(k >= 0 && k < EP_POLICY_COUNT);
    return ep_policy_table[k]->name;
}

ep_status ep_policy_kind_parse(const char *s, ep_policy_kind *out)
{
    for (int k = 0; k < EP_POLICY_COUNT; k++)
        if (!strcmp(s, ep_policy_table[k]->name)) {
            *out = (ep_policy_kind)k;
            return EP_OK;
        }
    return ep_errorf(
        EP_ERR_ARG,
        "expected a policy name (baseline, ban, pick, banpick, topp, des, laser), found '%s'", s);
}

// L'_l = (W_l - W_min) / (W_max - W_min) over the MoE layers; 0 when there
// are no sensitivities or they are all equal (no division by zero).
static void derive_lterm(const ep_routing_cfg *rc, float *lterm)
{
    memset(lterm, 0, (size_t)rc->n_layers * sizeof(float));
    const float *W = rc->ban.layer_sensitivity;
    if (!W) return;
    float lo = INFINITY, hi = -INFINITY;
    for (int l = rc->first_k_dense; l < rc->n_layers; l++) {
        lo = fminf(lo, W[l]);
        hi = fmaxf(hi, W[l]);
    }
    if (!(hi > lo)) return;
    for (int l = rc->first_k_dense; l < rc->n_layers; l++)
        lterm[l] = (W[l] - lo) / (hi - lo);
}

static void derive_keys(const ep_routing_cfg *rc, const ep_pick_domain *d, ep_pick_keys *k)
{
    int L = rc->n_layers, E = rc->n_experts, n = 0;
    for (size_t i = 0; i < (size_t)L * E; i++)
        n += d->key[i] != 0;
    k->off = ep_xmalloc(((size_t)L + 1) * sizeof(int));
    k->ids = ep_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    n = 0;
    for (int l = 0; l < L; l++) {
        k->off[l] = n;
        for (int e = 0; e < E; e++)
            if (d->key[(size_t)l * E + e]) k->ids[n++] = e;
    }
    k->off[L] = n;
}

static int derive_max_k(const ep_policy *p)
{
    const ep_routing_cfg *rc = &p->cfg;
    int mk = rc->k_base;
    // laser keeps its inner policy's K: its bound is the inner one's.
    ep_policy_kind kind = rc->policy == EP_POLICY_LASER ? rc->laser.after : rc->policy;
    bool adds = (kind == EP_POLICY_PICK || kind == EP_POLICY_BANPICK) &&
                (rc->pick.strategy == EP_PICK_A || rc->pick.strategy == EP_PICK_C);
    if (!adds) return mk;
    // Any domain may become active later (set_domain), so take the largest.
    for (int d = 0; d < rc->pick.n_domains; d++)
        for (int l = rc->first_k_dense; l < rc->n_layers; l++) {
            const ep_pick_keys *k = &p->params.keys[d];
            mk = EP_MAX(mk, rc->k_base + k->off[l + 1] - k->off[l]);
        }
    return EP_MIN(mk, rc->n_experts);
}

ep_status ep_policy_create_cfg(const ep_routing_cfg *rc, ep_policy **out)
{
    *out = NULL;
    ep_status st = ep_routing_cfg_validate(rc);
    if (st) return st;
    ep_policy *p = ep_xcalloc(1, sizeof *p);
    ep_routing_cfg_copy(&p->cfg, rc);
    p->vt = ep_policy_table[rc->policy];
    if (rc->policy == EP_POLICY_LASER) p->params.inner = ep_policy_table[rc->laser.after];
    p->params.ban_lterm = ep_xmalloc((size_t)rc->n_layers * sizeof(float));
    derive_lterm(&p->cfg, p->params.ban_lterm);
    p->params.keys =
        ep_xcalloc((size_t)(rc->pick.n_domains > 0 ? rc->pick.n_domains : 1), sizeof(ep_pick_keys));
    for (int d = 0; d < rc->pick.n_domains; d++)
        derive_keys(&p->cfg, &p->cfg.pick.domains[d], &p->params.keys[d]);
    p->params.max_k = derive_max_k(p);
    *out = p;
    return EP_OK;
}

static bool file_exists(const char *path)
{
    return access(path, R_OK) == 0;
}

ep_status ep_policy_create(const ep_model_cfg *cfg, const char *spec, ep_policy **out)
{
    *out = NULL;
    ep_policy_kind kind = EP_POLICY_BASELINE;
    ep_routing_cfg rc;
    ep_status st;
    if (ep_policy_kind_parse(spec, &kind) == EP_OK) {
        ep_clear_error();
        ep_routing_cfg_default(&rc, cfg, kind);
    } else {
        // A routing YAML: the path as given, else a preset configs/routing/<spec>.yaml.
        char path[1200];
        snprintf(path, sizeof path, "%s", spec);
        if (!file_exists(path)) snprintf(path, sizeof path, "configs/routing/%s.yaml", spec);
        if (!file_exists(path))
            snprintf(path, sizeof path, "%s/configs/routing/%s.yaml", EP_SOURCE_DIR, spec);
        if (!file_exists(path))
            return ep_errorf(EP_ERR_ARG,
                             "routing '%s': expected a policy name (baseline, ban, pick, banpick, "
                             "topp, des, laser) or a routing YAML file, found neither (also tried "
                             "configs/routing/%s.yaml)",
                             spec, spec);
        if ((st = ep_routing_cfg_load(path, cfg, &rc))) return st;
    }
    st = ep_policy_create_cfg(&rc, out);
    ep_routing_cfg_free(&rc);
    return st;
}

void ep_policy_free(ep_policy *p)
{
    if (!p) return;
    free(p->params.ban_lterm);
    for (int d = 0; d < p->cfg.pick.n_domains; d++) {
        free(p->params.keys[d].off);
        free(p->params.keys[d].ids);
    }
    free(p->params.keys);
    ep_routing_cfg_free(&p->cfg);
    free(p);
}

const char *ep_policy_name(const ep_policy *p)
{
    return p->vt->name;
}

int ep_policy_max_k(const ep_policy *p)
{
    return p->params.max_k;
}

int ep_policy_range(const ep_policy *p)
{
    return p->cfg.pick.range;
}

ep_status ep_policy_set_domain(ep_policy *p, const char *name)
{
    if (!name || !name[0]) {
        p->cfg.pick.domain = -1;
        return EP_OK;
    }
    int d = ep_routing_cfg_find_domain(&p->cfg, name);
    if (d < 0)
        return ep_errorf(EP_ERR_ARG,
                         "policy '%s' (%s): pick domain '%s' is not among the %d configured",
                         ep_policy_name(p), p->cfg.source[0] ? p->cfg.source : "defaults", name,
                         p->cfg.pick.n_domains);
    p->cfg.pick.domain = d;
    return EP_OK;
}

bool ep_policy_uses_load(const ep_policy *p)
{
    return p->cfg.policy == EP_POLICY_LASER;
}

// ---- automatic Pick domain -------------------------------------------------

int ep_pick_domain_auto(const ep_routing_cfg *rc, const float *hist, float *cos_out)
{
    size_t E = (size_t)rc->n_experts;
    size_t lo = (size_t)rc->first_k_dense * E, hi = (size_t)rc->n_layers * E;
    double hh = 0.0;
    for (size_t i = lo; i < hi; i++)
        hh += (double)hist[i] * hist[i];
    int best = -1;
    double best_cos = -2.0;
    if (hh > 0.0) {
        for (int d = 0; d < rc->pick.n_domains; d++) {
            const float *f = rc->pick.domains[d].frequency;
            if (!f) continue;
            double ff = 0.0, hf = 0.0;
            for (size_t i = lo; i < hi; i++) {
                ff += (double)f[i] * f[i];
                hf += (double)hist[i] * f[i];
            }
            double c = ff > 0.0 ? hf / (sqrt(hh) * sqrt(ff)) : 0.0;
            if (c > best_cos) {
                best_cos = c;
                best = d;
            }
        }
    }
    if (cos_out) *cos_out = best >= 0 ? (float)best_cos : 0.0f;
    return best;
}

void ep_routes_histogram_add(const ep_routes *r, int n_experts, float *hist_layer)
{
    int nnz = ep_routes_nnz(r);
    for (int j = 0; j < nnz; j++) {
        EP_ASSERT(r->expert[j] >= 0 && r->expert[j] < n_experts);
        hist_layer[r->expert[j]] += 1.0f;
    }
}
