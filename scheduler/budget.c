// Expert-slot budget admission and the per-sequence mean-K estimate. The
// prediction is deliberately simple (a recent mean K per sequence): the
// routing of a sequence changes slowly, and a wrong guess costs one step's
// balance, never correctness. Nothing here touches tokens or weights.
#include "scheduler/budget.h"

#include <math.h>
#include <string.h>

void ep_sched_budget_default(ep_sched_budget *b, int k_base, int n_moe_layers, int max_tokens_hint)
{
    memset(b, 0, sizeof *b);
    b->k_base = k_base;
    b->n_moe_layers = n_moe_layers;
    b->kv_free = -1;
    b->k_alpha = 0.25;
    b->slot_budget = (int64_t)max_tokens_hint * k_base * n_moe_layers;
}

static double k_hat(const ep_sched_budget *b, const ep_sched_seq *s)
{
    return s->mean_k > 0 ? s->mean_k : s->prior_k > 0 ? s->prior_k : (double)b->k_base;
}

double ep_sched_predict_slots(const ep_sched_budget *b, const ep_sched_seq *s, int n)
{
    // Not rounded per sequence: a step of many one-token decodes would
    // otherwise lose up to a pair per sequence to rounding.
    return (double)n * k_hat(b, s) * b->n_moe_layers;
}

ep_sched_step ep_sched_admit(const ep_sched_budget *b, const ep_sched_seq *q, int n)
{
    EP_ASSERT(b->k_base >= 1 && b->n_moe_layers >= 0);
    ep_sched_step st;
    memset(&st, 0, sizeof st);
    int64_t kv_left = b->kv_free;
    for (int i = 0; i < n; i++) {
        const ep_sched_seq *s = &q[i];
        int want = s->want_tokens;
        if (want <= 0) {
            st.n_seqs++; // nothing to run: admitting it costs nothing
            continue;
        }
        int fit = want;
        if (b->max_tokens > 0 && st.tokens + fit > b->max_tokens) fit = b->max_tokens - st.tokens;
        if (kv_left >= 0 && s->kv_need > 0) {
            // KV need per token, rounded up (a prefill needs one slot per token).
            int64_t per = (s->kv_need + want - 1) / want;
            if ((int64_t)fit * per > kv_left) fit = (int)(kv_left / per);
        }
        double per_tok = k_hat(b, s) * b->n_moe_layers;
        if (per_tok > 0) {
            double left = (double)b->slot_budget - st.slots;
            int by_slots = left > 0 ? (int)floor(left / per_tok + 1e-9) : 0;
            if (by_slots < fit) fit = by_slots;
        }
        if (fit <= 0 && st.tokens == 0) fit = 1; // progress: the first sequence always runs
        if (fit <= 0) break;
        st.n_seqs++;
        st.tokens += fit;
        st.slots += ep_sched_predict_slots(b, s, fit);
        if (kv_left >= 0 && s->kv_need > 0)
            kv_left -= (int64_t)fit * ((s->kv_need + want - 1) / want);
        if (fit < want) {
            st.last_partial_tokens = fit;
            break; // first come, first served: nothing jumps a partly admitted sequence
        }
    }
    return st;
}

void ep_sched_observe(const ep_sched_budget *b, ep_sched_seq *s, int64_t pairs,
                      int64_t token_layers)
{
    if (token_layers <= 0) return;
    double k = (double)pairs / (double)token_layers;
    s->mean_k = s->mean_k > 0 ? (1 - b->k_alpha) * s->mean_k + b->k_alpha * k : k;
}
