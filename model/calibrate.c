// Calibration sweeps over the full model: one baseline sweep (recording R_i,
// kept-set frequencies and DES's score ratios, keeping each position's top-N
// next-token logits), one sweep per MoE layer at K_min, one per key-expert
// candidate with that expert dropped. Sequence i always runs on rank
// i % world; per-sequence KL sums are reduced and then added in sequence
// order, and DES's medians come from summed counts, so the result does not
// depend on reduction order. The pure parts are router/calibrate.c.
#include "model/calibrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ep_calib_opts_default(ep_calib_opts *o)
{
    memset(o, 0, sizeof *o);
}

void ep_calib_summary_free(ep_calib_summary *s)
{
    if (!s) return;
    free(s->w);
    memset(s, 0, sizeof *s);
}

typedef struct {
    const ep_model_cfg *cfg;
    ep_cluster *cl;
    ep_model *m;
    const ep_calib_data *data;
    int n_top;
    float *logits;   // [max_len, vocab] one sequence's next-token logits
    int64_t *pos_of; // [n_seqs] first row of the sequence in p_idx / p_sel; -1: other rank
    int *p_idx;      // [my positions, n_top] baseline top-N token ids
    float *p_sel;    // [my positions, n_top] baseline logits of those tokens
    double *kl_seq;  // [n_seqs] summed KL of each sequence's positions
    int *sel;        // [n_seqs] sequences of the current sweep
    int sweep, n_sweeps;
    bool progress;
} calib_run;

static bool mine(const calib_run *r, int i)
{
    return i % r->cl->world_size == r->cl->rank;
}

// One forward pass over the sequences sel[0..n_sel) with policy cp. The
// baseline sweep (baseline == true) stores the top-N rows; every other sweep
// returns the mean top-N KL against them over all positions of sel.
static ep_status sweep(calib_run *r, ep_calib_policy *cp, const int *sel, int n_sel, bool baseline,
                       const char *what, double *mean_kl)
{
    const ep_calib_data *d = r->data;
    const int V = r->cfg->vocab, W = r->cl->world_size;
    double t0 = ep_now_us();
    // Rounds: every rank runs its k-th own sequence of sel in round k; ranks
    // with fewer still join each round's collectives with an empty batch.
    int *per_rank = ep_xcalloc((size_t)W, sizeof(int));
    for (int j = 0; j < n_sel; j++)
        per_rank[sel[j] % W]++;
    int rounds = 0;
    for (int q = 0; q < W; q++)
        rounds = EP_MAX(rounds, per_rank[q]);
    free(per_rank);
    memset(r->kl_seq, 0, (size_t)d->n_seqs * sizeof(double));
    ep_status st = EP_OK;
    int next = 0;
    for (int round = 0; round < rounds && !st; round++) {
        while (next < n_sel && !mine(r, sel[next]))
            next++;
        int i = next < n_sel ? sel[next++] : -1;
        int seq = -1, n_new = i >= 0 ? d->off[i + 1] - d->off[i] : 0;
        ep_batch b = {.n_seqs = 0, .seq = &seq, .n_new = &n_new, .all_logits = true};
        if (i >= 0) {
            // A fresh KV sequence per pass: nothing of the last sweep leaks in.
            // The pool holds exactly one sequence of max_len tokens, freed below.
            ep_status sn = ep_model_seq_new(r->m, &seq);
            EP_ASSERT(sn == EP_OK);
            b.n_seqs = 1;
            b.tokens = d->tokens + d->off[i];
            if (cp->rec) cp->rec->domain = d->domain[i];
        }
        st = ep_model_forward(r->m, &cp->base, &b, r->logits, NULL);
        if (i >= 0) ep_model_seq_free(r->m, seq);
        if (st || i < 0) continue;
        for (int t = 0; t < n_new; t++) {
            const float *row = r->logits + (size_t)t * V;
            size_t at = (size_t)(r->pos_of[i] + t) * r->n_top;
            if (baseline) {
                ep_calib_top_tokens(row, V, r->n_top, r->p_idx + at);
                for (int j = 0; j < r->n_top; j++)
                    r->p_sel[at + j] = row[r->p_idx[at + j]];
            } else {
                r->kl_seq[i] += ep_calib_kl_sel(r->p_sel + at, row, r->p_idx + at, r->n_top);
            }
        }
    }
    if (st) return ep_error_prefix(st, "calibrate: sweep '%s'", what);
    // Each entry is non-zero on one rank only, so the sum is exact.
    if ((st = ep_cluster_allreduce_f64(r->cl, r->kl_seq, d->n_seqs, EP_REDUCE_SUM))) return st;
    double kl = 0.0;
    int64_t n_pos = 0;
    for (int j = 0; j < n_sel; j++) {
        kl += r->kl_seq[sel[j]];
        n_pos += d->off[sel[j] + 1] - d->off[sel[j]];
    }
    if (mean_kl) *mean_kl = n_pos > 0 ? kl / (double)n_pos : 0.0;
    r->sweep++;
    if (r->progress && r->cl->rank == 0) {
        if (baseline)
            fprintf(stderr, "calibrate: sweep %d: %s, %lld positions (%.1f s)\n", r->sweep, what,
                    (long long)n_pos, (ep_now_us() - t0) * 1e-6);
        else
            fprintf(stderr, "calibrate: sweep %d/%d: %s: mean top-%d KL %.6g (%.1f s)\n", r->sweep,
                    r->n_sweeps, what, r->n_top, kl / (double)(n_pos ? n_pos : 1),
                    (ep_now_us() - t0) * 1e-6);
    }
    return EP_OK;
}

static ep_status sum_i64(void *cl, int64_t *v, int n)
{
    return ep_cluster_allreduce_i64(cl, v, n, EP_REDUCE_SUM);
}

static ep_status reduce_record(ep_cluster *cl, ep_calib_record *rec)
{
    size_t nl = (size_t)rec->n_domains * rec->n_layers;
    ep_status st =
        ep_cluster_allreduce_i64(cl, rec->count, (int)(nl * rec->n_experts), EP_REDUCE_SUM);
    if (!st) st = ep_cluster_allreduce_i64(cl, rec->tokens, (int)nl, EP_REDUCE_SUM);
    if (!st) st = ep_cluster_allreduce_f64(cl, &rec->r_min, 1, EP_REDUCE_MIN);
    if (!st) st = ep_cluster_allreduce_f64(cl, &rec->r_max, 1, EP_REDUCE_MAX);
    return st;
}

void ep_calib_model_opts(const ep_model_cfg *cfg, const ep_calib_data *data, ep_model_opts *mo)
{
    ep_model_opts_default(mo, cfg);
    mo->moe.cap_tokens = data->max_len;
    mo->max_ctx = EP_MIN(data->max_len, cfg->max_pos);
    mo->max_seqs = 1;
    mo->kv_block_tokens = 16;
    mo->kv_blocks = (mo->max_ctx + 15) / 16;
}

ep_status ep_calibrate(const ep_model_cfg *cfg, ep_cluster *cl, ep_model *m,
                       const ep_calib_data *data, const ep_calib_opts *o, ep_routing_cfg *rc,
                       ep_calib_summary *sum)
{
    memset(rc, 0, sizeof *rc);
    memset(sum, 0, sizeof *sum);
    const int L = cfg->n_layers, E = cfg->n_experts, kb = cfg->k_base, N = data->n_seqs;
    const int n_moe = L - cfg->first_k_dense;
    int k_min = o->k_min > 0 ? o->k_min : EP_MIN(3, kb);
    if (k_min > kb)
        return ep_errorf(EP_ERR_ARG, "calibrate: --k-min: expected 1..%d (k_base of %s), found %d",
                         kb, cfg->name, k_min);
    if (n_moe <= 0)
        return ep_errorf(EP_ERR_ARG, "calibrate: %s has no MoE layer (first_k_dense %d of %d)",
                         cfg->name, cfg->first_k_dense, L);
    if (data->max_len > cfg->max_pos)
        return ep_errorf(EP_ERR_ARG,
                         "calibrate: a sequence of %d tokens, expected at most %d "
                         "(max_position_embeddings of %s)",
                         data->max_len, cfg->max_pos, cfg->name);
    bool found = !o->active;
    for (int d = 0; d < data->n_domains && !found; d++)
        found = !strcmp(data->names[d], o->active);
    if (!found)
        return ep_errorf(EP_ERR_ARG,
                         "calibrate: --domain '%s': expected one of the %d domains in the data, "
                         "found none of that name",
                         o->active, data->n_domains);
    int top_keys = o->top_keys > 0 ? o->top_keys : (n_moe + 3) / 4;
    int n_cand = o->key_candidates > 0 ? EP_MIN(o->key_candidates, E) : EP_MIN(2, E);

    calib_run r = {.cfg = cfg, .cl = cl, .m = m, .data = data, .progress = o->progress};
    r.n_top = EP_MIN(o->top_tokens > 0 ? o->top_tokens : 1000, cfg->vocab);
    ep_status st = EP_OK;

    r.pos_of = ep_xmalloc((size_t)N * sizeof(int64_t));
    int64_t my_pos = 0;
    for (int i = 0; i < N; i++) {
        r.pos_of[i] = mine(&r, i) ? my_pos : -1;
        if (mine(&r, i)) my_pos += data->off[i + 1] - data->off[i];
    }
    r.p_idx = ep_xmalloc((size_t)(my_pos > 0 ? my_pos : 1) * r.n_top * sizeof(int));
    r.p_sel = ep_xmalloc((size_t)(my_pos > 0 ? my_pos : 1) * r.n_top * sizeof(float));
    r.logits = ep_xmalloc((size_t)data->max_len * cfg->vocab * sizeof(float));
    r.kl_seq = ep_xmalloc((size_t)N * sizeof(double));
    r.sel = ep_xmalloc((size_t)N * sizeof(int));
    sum->w = ep_xcalloc((size_t)L, sizeof(double));

    ep_calib_policy cp;
    ep_calib_policy_init(&cp, cfg);
    ep_calib_record rec;
    ep_calib_record_init(&rec, L, E, kb, data->n_domains);
    float *des_median = kb > 1 ? ep_xmalloc((size_t)L * (kb - 1) * sizeof(float)) : NULL;
    ep_calib_key_cand **keys = ep_xcalloc((size_t)data->n_domains, sizeof *keys);
    int *n_keys = ep_xcalloc((size_t)data->n_domains, sizeof(int));
    int *freq = ep_xmalloc((size_t)n_cand * sizeof(int));
    char what[160];

    // 1. Baseline: top-N rows, R_i, frequencies.
    for (int i = 0; i < N; i++)
        r.sel[i] = i;
    cp.rec = &rec;
    if ((st = sweep(&r, &cp, r.sel, N, true, "baseline (top-k_base everywhere)", NULL))) goto out;
    cp.rec = NULL;
    if ((st = reduce_record(cl, &rec))) goto out;
    if (des_median && (st = ep_calib_des_medians(&rec, sum_i64, cl, des_median))) goto out;
    // Every rank derives the same candidates from the reduced counts.
    int n_key_sweeps = 0;
    for (int d = 0; d < data->n_domains; d++)
        for (int l = cfg->first_k_dense; l < L; l++)
            n_key_sweeps += ep_calib_frequent(rec.count + ((size_t)d * L + l) * E, E, n_cand, freq);
    r.n_sweeps = 1 + (k_min < kb ? n_moe : 0) + n_key_sweeps;

    // 2. W_l: only layer l at K_min (equal to the baseline when K_min == k_base).
    if (k_min < kb)
        for (int l = cfg->first_k_dense; l < L; l++) {
            ep_calib_policy_set(&cp, l, k_min, -1);
            snprintf(what, sizeof what, "layer %d at K_min %d", l, k_min);
            if ((st = sweep(&r, &cp, r.sel, N, false, what, &sum->w[l]))) goto out;
        }

    // 3. Key experts: per domain, the most frequent experts of each layer,
    // each dropped alone on that domain's sequences.
    for (int d = 0; d < data->n_domains; d++) {
        int n_sel = 0;
        for (int i = 0; i < N; i++)
            if (data->domain[i] == d) r.sel[n_sel++] = i;
        keys[d] = ep_xmalloc((size_t)(n_moe * n_cand) * sizeof(ep_calib_key_cand));
        int nc = 0;
        for (int l = cfg->first_k_dense; l < L; l++) {
            int nf = ep_calib_frequent(rec.count + ((size_t)d * L + l) * E, E, n_cand, freq);
            for (int j = 0; j < nf; j++) {
                ep_calib_key_cand *c = &keys[d][nc++];
                c->layer = l;
                c->expert = freq[j];
                ep_calib_policy_set(&cp, l, kb, freq[j]);
                snprintf(what, sizeof what, "domain %s: layer %d without expert %d", data->names[d],
                         l, freq[j]);
                if ((st = sweep(&r, &cp, r.sel, n_sel, false, what, &c->kl))) goto out;
            }
        }
        n_keys[d] = ep_calib_choose_keys(keys[d], nc, top_keys);
    }

    ep_calib_result res = {
        .k_min = k_min,
        .w = sum->w,
        .r_min = rec.r_min,
        .r_max = rec.r_max,
        .rec = &rec,
        .des_median = des_median,
        .keys = (const ep_calib_key_cand *const *)keys,
        .n_keys = n_keys,
        .names = (const char(*)[64])data->names,
        .active = o->active,
        .auto_domain = o->auto_domain,
    };
    st = ep_calib_build_cfg(cfg, &res, rc);
    sum->n_tokens = data->off[N];
    sum->n_sweeps = r.sweep;
    sum->top_tokens = r.n_top;
    sum->k_min = k_min;
    sum->top_keys = top_keys;
    sum->r_min = rec.r_min;
    sum->r_max = rec.r_max;
out:
    if (st) ep_calib_summary_free(sum);
    for (int d = 0; d < data->n_domains; d++)
        free(keys[d]);
    free(keys);
    free(n_keys);
    free(freq);
    free(des_median);
    ep_calib_record_free(&rec);
    ep_calib_policy_free(&cp);
    free(r.pos_of);
    free(r.p_idx);
    free(r.p_sel);
    free(r.logits);
    free(r.kl_seq);
    free(r.sel);
    return st;
}
