// The step plan's wire format (scheduler/engine_impl.h): the int32 words rank
// 0 broadcasts each step, written by its planner (engine.c) and read by
// every rank (engine_step.c). It decides nothing: what runs where is the
// planner's; what a rank does with it is the step's.
//
// Words: [0] step, [1] flags (1 = stop, 2 = after a failed step, 4 = re-place
// the experts before the forward), [2] routing
// index, [3] domain bytes, [4..20) domain (NUL-padded), then three sections,
// each a count and its entries:
//   frees: {slot, owner},
//   news:  {slot, owner, temperature (f32 bits), top_k, top_p (f32 bits), seed lo, hi,
//           repetition_penalty, presence_penalty, frequency_penalty (f32 bits),
//           min_tokens, n_bias, n_bias x {token, bias (f32 bits)},
//           sampled, n_hit, n_hit x {hash lo, hi}} (sampled: tokens sampled before a
//           preemption; n_hit: cached KV blocks its prefix maps),
//   runs:  {slot, owner, n, sample, n tokens}.
// A stop plan has frees only (its news and runs are empty).
#include "scheduler/engine_impl.h"

#include <string.h>

enum { FLAG_STOP = 1, FLAG_FAILED = 2, FLAG_REPLACE = 4 };
enum { SEC_END = EP_ENG_PLAN_RUNS + 1 }; // past the last section
enum { FREE_WORDS = 2, NEW_WORDS = 14 + 2 * EP_SAMPLE_MAX_BIAS, RUN_HEAD_WORDS = 4 };

size_t ep_eng_plan_words(int slots, int64_t tokens, int64_t hit_blocks)
{
    size_t cap = (size_t)slots;
    return EP_ENG_PLAN_MIN_WORDS + FREE_WORDS * cap + NEW_WORDS * cap + RUN_HEAD_WORDS * cap +
           (size_t)tokens + 2 * (size_t)hit_blocks;
}

// ---- writing (rank 0) --------------------------------------------------------------

static void put(ep_eng_plan_writer *p, int32_t v)
{
    EP_ASSERT(p->n < p->cap);
    p->w[p->n++] = v;
}

// Closes the open section (its count) and opens the following ones up to to.
static void advance(ep_eng_plan_writer *p, int to)
{
    EP_ASSERT(p->section <= to);
    while (p->section < to) {
        p->w[p->count_at] = p->count;
        if (++p->section < SEC_END) {
            p->count_at = p->n;
            put(p, 0);
            p->count = 0;
        }
    }
}

void ep_eng_plan_begin(ep_eng_plan_writer *p, int32_t *words, size_t cap, const ep_eng_plan_head *h)
{
    size_t dlen = strlen(h->domain);
    EP_ASSERT(dlen < EP_ENG_DOMAIN_MAX && cap >= EP_ENG_PLAN_MIN_WORDS);
    *p = (ep_eng_plan_writer){.w = words, .cap = cap};
    put(p, (int32_t)h->step);
    put(p, (h->stop ? FLAG_STOP : 0) | (h->failed ? FLAG_FAILED : 0) |
               (h->replace ? FLAG_REPLACE : 0));
    put(p, h->routing);
    put(p, (int32_t)dlen);
    memset(p->w + p->n, 0, EP_ENG_DOMAIN_MAX);
    memcpy(p->w + p->n, h->domain, dlen);
    p->n += EP_ENG_DOMAIN_MAX / sizeof(int32_t);
    p->section = EP_ENG_PLAN_FREES;
    p->count_at = p->n;
    put(p, 0);
}

void ep_eng_plan_put_free(ep_eng_plan_writer *p, int slot, int owner)
{
    advance(p, EP_ENG_PLAN_FREES);
    put(p, slot);
    put(p, owner);
    p->count++;
}

void ep_eng_plan_put_new(ep_eng_plan_writer *p, int slot, int owner, const ep_sample_params *sp,
                         int sampled, int n_hit, const uint64_t *hashes)
{
    advance(p, EP_ENG_PLAN_NEWS);
    put(p, slot);
    put(p, owner);
    put(p, (int32_t)ep_f32_bits(sp->temperature));
    put(p, sp->top_k);
    put(p, (int32_t)ep_f32_bits(sp->top_p));
    put(p, (int32_t)(uint32_t)sp->seed);
    put(p, (int32_t)(uint32_t)(sp->seed >> 32));
    put(p, (int32_t)ep_f32_bits(sp->repetition_penalty));
    put(p, (int32_t)ep_f32_bits(sp->presence_penalty));
    put(p, (int32_t)ep_f32_bits(sp->frequency_penalty));
    put(p, sp->min_tokens);
    EP_ASSERT(sp->n_bias >= 0 && sp->n_bias <= EP_SAMPLE_MAX_BIAS);
    put(p, sp->n_bias);
    for (int i = 0; i < sp->n_bias; i++) {
        put(p, sp->bias_tok[i]);
        put(p, (int32_t)ep_f32_bits(sp->bias_val[i]));
    }
    put(p, sampled);
    put(p, n_hit);
    for (int i = 0; i < n_hit; i++) {
        put(p, (int32_t)(uint32_t)hashes[i]);
        put(p, (int32_t)(uint32_t)(hashes[i] >> 32));
    }
    p->count++;
}

void ep_eng_plan_put_run(ep_eng_plan_writer *p, int slot, int owner, int n, bool sample,
                         const int *tokens)
{
    advance(p, EP_ENG_PLAN_RUNS);
    EP_ASSERT(n >= 1 && p->n + RUN_HEAD_WORDS + (size_t)n <= p->cap);
    put(p, slot);
    put(p, owner);
    put(p, n);
    put(p, sample);
    memcpy(p->w + p->n, tokens, (size_t)n * sizeof(int32_t));
    p->n += (size_t)n;
    p->count++;
}

size_t ep_eng_plan_end(ep_eng_plan_writer *p)
{
    advance(p, SEC_END);
    return p->n;
}

// ---- reading (every rank) -----------------------------------------------------------

static int32_t get(ep_eng_plan_reader *r)
{
    EP_ASSERT(r->at < r->n);
    return r->w[r->at++];
}

// Moves to section sec (reading the counts of the sections on the way,
// which must be used up).
static void open_section(ep_eng_plan_reader *r, int sec)
{
    EP_ASSERT(sec >= EP_ENG_PLAN_FREES && sec < SEC_END && r->section <= sec);
    while (r->section < sec) {
        EP_ASSERT(r->left == 0);
        r->section++;
        r->left = get(r);
    }
}

// Takes one entry of section sec.
static void entry(ep_eng_plan_reader *r, int sec)
{
    open_section(r, sec);
    EP_ASSERT(r->left > 0);
    r->left--;
}

void ep_eng_plan_read(ep_eng_plan_reader *r, const int32_t *words, size_t n, ep_eng_plan_head *h)
{
    EP_ASSERT(n >= EP_ENG_PLAN_MIN_WORDS);
    *r = (ep_eng_plan_reader){.w = words, .n = n};
    h->step = get(r);
    int32_t flags = get(r);
    h->stop = (flags & FLAG_STOP) != 0;
    h->failed = (flags & FLAG_FAILED) != 0;
    h->replace = (flags & FLAG_REPLACE) != 0;
    h->routing = get(r);
    int32_t dlen = get(r);
    EP_ASSERT(dlen >= 0 && dlen < EP_ENG_DOMAIN_MAX);
    memcpy(h->domain, words + r->at, (size_t)dlen);
    h->domain[dlen] = 0;
    r->at += EP_ENG_DOMAIN_MAX / sizeof(int32_t);
    r->section = EP_ENG_PLAN_FREES;
    r->left = get(r);
}

int ep_eng_plan_count(ep_eng_plan_reader *r, ep_eng_plan_section sec)
{
    open_section(r, (int)sec);
    return r->left;
}

void ep_eng_plan_get_free(ep_eng_plan_reader *r, int *slot, int *owner)
{
    entry(r, EP_ENG_PLAN_FREES);
    *slot = get(r);
    *owner = get(r);
}

void ep_eng_plan_get_new(ep_eng_plan_reader *r, int *slot, int *owner, ep_sample_params *sp,
                         int *sampled, int *n_hit, uint64_t *hashes, int max_hit)
{
    entry(r, EP_ENG_PLAN_NEWS);
    *slot = get(r);
    *owner = get(r);
    memset(sp, 0, sizeof *sp);
    sp->temperature = ep_bits_f32((uint32_t)get(r));
    sp->top_k = get(r);
    sp->top_p = ep_bits_f32((uint32_t)get(r));
    uint32_t lo = (uint32_t)get(r), hi = (uint32_t)get(r);
    sp->seed = (uint64_t)lo | (uint64_t)hi << 32;
    sp->repetition_penalty = ep_bits_f32((uint32_t)get(r));
    sp->presence_penalty = ep_bits_f32((uint32_t)get(r));
    sp->frequency_penalty = ep_bits_f32((uint32_t)get(r));
    sp->min_tokens = get(r);
    // A count past the maximum is a corrupt plan: read none (the sampler's
    // init then refuses nothing it should not; the planner never writes one).
    int nb = get(r);
    sp->n_bias = nb >= 0 && nb <= EP_SAMPLE_MAX_BIAS ? nb : 0;
    for (int i = 0; i < sp->n_bias; i++) {
        sp->bias_tok[i] = get(r);
        sp->bias_val[i] = ep_bits_f32((uint32_t)get(r));
    }
    *sampled = get(r);
    *n_hit = get(r);
    EP_ASSERT(*n_hit >= 0 && *n_hit <= max_hit);
    for (int i = 0; i < *n_hit; i++) {
        uint32_t hl = (uint32_t)get(r), hh = (uint32_t)get(r);
        hashes[i] = (uint64_t)hl | (uint64_t)hh << 32;
    }
}

void ep_eng_plan_get_run(ep_eng_plan_reader *r, int *slot, int *owner, int *n, bool *sample,
                         const int32_t **tokens)
{
    entry(r, EP_ENG_PLAN_RUNS);
    *slot = get(r);
    *owner = get(r);
    *n = get(r);
    *sample = get(r) != 0;
    EP_ASSERT(*n >= 1 && r->at + (size_t)*n <= r->n);
    *tokens = r->w + r->at;
    r->at += (size_t)*n;
}
