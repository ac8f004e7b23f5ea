// Loading and replaying routing traces (sim/trace.h).
// Trace layers are mapped onto the model's MoE layers in order (MoE layer i
// uses the i-th trace layer, modulo their count): traces come from models
// much larger than the ones a CPU can run. Weights missing from a trace are
// 1/K (a renormalised uniform choice); they change numbers, not bytes.
#include "sim/trace.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int trace_layer; // the layer id the file gave (-1: none)
    int n, cap;      // rows
    int *off;        // [n + 1]
    int *expert;     // [off[n]]
    float *weight;   // [off[n]]
    int *base;       // [n * k_base]
} trace_layer;

struct ep_trace {
    int k_base;
    int n_layers;
    trace_layer *layers; // sorted by trace_layer
};

static trace_layer *layer_get(ep_trace *t, int id)
{
    for (int i = 0; i < t->n_layers; i++)
        if (t->layers[i].trace_layer == id) return &t->layers[i];
    t->layers = ep_xrealloc(t->layers, (size_t)(t->n_layers + 1) * sizeof *t->layers);
    trace_layer *l = &t->layers[t->n_layers++];
    memset(l, 0, sizeof *l);
    l->trace_layer = id;
    l->off = ep_xcalloc(1, sizeof(int));
    return l;
}

// Appends one row; base may be NULL when k >= k_base (then its first k_base).
static void layer_add(trace_layer *l, int k_base, const int *ex, const float *w, int k,
                      const int *base)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->off = ep_xrealloc(l->off, (size_t)(l->cap + 1) * sizeof(int));
        l->base = ep_xrealloc(l->base, (size_t)l->cap * k_base * sizeof(int));
    }
    int at = l->off[l->n];
    l->expert = ep_xrealloc(l->expert, (size_t)(at + k) * sizeof(int));
    l->weight = ep_xrealloc(l->weight, (size_t)(at + k) * sizeof(float));
    for (int j = 0; j < k; j++) {
        l->expert[at + j] = ex[j];
        l->weight[at + j] = w ? w[j] : 1.0f / (float)k;
    }
    memcpy(l->base + (size_t)l->n * k_base, base ? base : ex, (size_t)k_base * sizeof(int));
    l->off[++l->n] = at + k;
}

static int cmp_layer(const void *a, const void *b)
{
    int x = ((const trace_layer *)a)->trace_layer, y = ((const trace_layer *)b)->trace_layer;
    return (x > y) - (x < y); // layer ids come from the file: a difference could overflow
}

static ep_status check_ids(const char *path, long line, const int *ex, int k, int n_experts)
{
    for (int j = 0; j < k; j++) {
        if (ex[j] < 0 || ex[j] >= n_experts)
            return ep_errorf(EP_ERR_FORMAT, "%s:%ld: expert id %d outside [0, %d) of the model",
                             path, line, ex[j], n_experts);
        for (int q = 0; q < j; q++)
            if (ex[q] == ex[j])
                return ep_errorf(EP_ERR_FORMAT, "%s:%ld: expert %d listed twice", path, line,
                                 ex[j]);
    }
    return EP_OK;
}

static ep_status int_array(const char *path, long line, json_t *a, const char *key, int *out,
                           int max, int *n)
{
    if (!json_is_array(a))
        return ep_errorf(EP_ERR_FORMAT, "%s:%ld: key '%s': expected an array of integers", path,
                         line, key);
    if ((int)json_array_size(a) > max || json_array_size(a) == 0)
        return ep_errorf(EP_ERR_FORMAT, "%s:%ld: key '%s': expected 1..%d entries, found %zu", path,
                         line, key, max, json_array_size(a));
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v))
            return ep_errorf(EP_ERR_FORMAT, "%s:%ld: key '%s'[%zu]: expected an integer", path,
                             line, key, i);
        json_int_t iv = json_integer_value(v);
        if (iv < INT_MIN || iv > INT_MAX) // ids are checked later; keep them from wrapping first
            return ep_errorf(EP_ERR_FORMAT, "%s:%ld: key '%s'[%zu]: %lld is out of range", path,
                             line, key, i, (long long)iv);
        out[i] = (int)iv;
    }
    *n = (int)json_array_size(a);
    return EP_OK;
}

static ep_status load_jsonl(FILE *f, const char *path, const ep_model_cfg *cfg, int max_k,
                            ep_trace *t)
{
    char *buf = NULL;
    size_t cap = 0;
    long line = 0;
    int ex[256], base[256], n, nb;
    float w[256];
    ep_status st = EP_OK;
    while (getline(&buf, &cap, f) >= 0) {
        line++;
        if (buf[strspn(buf, " \t\r\n")] == '\0') continue;
        json_error_t je;
        json_t *o = json_loads(buf, 0, &je);
        if (!json_is_object(o)) {
            json_decref(o);
            st = ep_errorf(EP_ERR_FORMAT, "%s:%ld: expected a JSON object per line: %s", path, line,
                           je.text);
            break;
        }
        json_t *jl = json_object_get(o, "layer");
        int lid = json_is_integer(jl) ? (int)json_integer_value(jl) : -1;
        if ((st = int_array(path, line, json_object_get(o, "experts"), "experts", ex,
                            EP_MIN(max_k, 256), &n)) ||
            (st = check_ids(path, line, ex, n, cfg->n_experts))) {
            json_decref(o);
            break;
        }
        json_t *jw = json_object_get(o, "weights");
        bool has_w = jw != NULL;
        if (has_w) {
            if (!json_is_array(jw) || (int)json_array_size(jw) != n) {
                json_decref(o);
                st = ep_errorf(EP_ERR_FORMAT,
                               "%s:%ld: key 'weights': expected %d numbers (one per expert)", path,
                               line, n);
                break;
            }
            for (int j = 0; j < n; j++) {
                json_t *jv = json_array_get(jw, (size_t)j);
                double v = json_number_value(jv);
                if (!json_is_number(jv) || !isfinite(v)) {
                    st = ep_errorf(EP_ERR_FORMAT,
                                   "%s:%ld: key 'weights'[%d]: expected a finite number", path,
                                   line, j);
                    break;
                }
                w[j] = (float)v;
            }
            if (st) {
                json_decref(o);
                break;
            }
        }
        json_t *jb = json_object_get(o, "base_experts");
        const int *bp = NULL;
        if (jb) {
            if ((st = int_array(path, line, jb, "base_experts", base, 256, &nb)) ||
                (st = check_ids(path, line, base, nb, cfg->n_experts))) {
                json_decref(o);
                break;
            }
            if (nb != cfg->k_base) {
                json_decref(o);
                st = ep_errorf(EP_ERR_FORMAT,
                               "%s:%ld: key 'base_experts': expected k_base = %d ids, found %d",
                               path, line, cfg->k_base, nb);
                break;
            }
            bp = base;
        } else if (n < cfg->k_base) {
            json_decref(o);
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s:%ld: %d experts < k_base %d and no 'base_experts': the fixed-K "
                           "counterfactual cannot be counted",
                           path, line, n, cfg->k_base);
            break;
        }
        layer_add(layer_get(t, lid), cfg->k_base, ex, has_w ? w : NULL, n, bp);
        json_decref(o);
    }
    free(buf);
    return st;
}

// CSV: a header row; the column named "layer" and columns e0, e1, ... hold ids.
static ep_status load_csv(FILE *f, const char *path, const ep_model_cfg *cfg, int max_k,
                          ep_trace *t)
{
    char *buf = NULL;
    size_t cap = 0;
    long line = 0;
    int layer_col = -1, ecol[256], n_e = 0;
    ep_status st = EP_OK;
    if (getline(&buf, &cap, f) < 0) {
        free(buf);
        return ep_errorf(EP_ERR_FORMAT, "%s: empty file", path);
    }
    line = 1;
    {
        int col = 0;
        char *save = NULL;
        for (char *c = strtok_r(buf, ",\r\n", &save); c;
             c = strtok_r(NULL, ",\r\n", &save), col++) {
            if (!strcmp(c, "layer"))
                layer_col = col;
            else if (c[0] == 'e' && c[1] >= '0' && c[1] <= '9' && n_e < 256)
                ecol[n_e++] = col;
        }
    }
    if (n_e == 0) {
        free(buf);
        return ep_errorf(EP_ERR_FORMAT,
                         "%s:1: header: expected columns e0, e1, ... with expert ids", path);
    }
    if (n_e > max_k || n_e < cfg->k_base) {
        free(buf);
        return ep_errorf(EP_ERR_FORMAT, "%s:1: %d expert columns; the model needs k_base %d..%d",
                         path, n_e, cfg->k_base, max_k);
    }
    int ex[256];
    while (getline(&buf, &cap, f) >= 0) {
        line++;
        if (buf[strspn(buf, " \t\r\n")] == '\0') continue;
        int col = 0, got = 0, lid = -1;
        char *save = NULL;
        for (char *c = strtok_r(buf, ",\r\n", &save); c;
             c = strtok_r(NULL, ",\r\n", &save), col++) {
            char *end;
            errno = 0;
            long v = strtol(c, &end, 10);
            bool bad = *end || end == c || errno == ERANGE || v < INT_MIN || v > INT_MAX;
            if (col == layer_col) {
                if (bad) {
                    st = ep_errorf(EP_ERR_FORMAT,
                                   "%s:%ld: column 'layer': expected a layer id, found '%s'", path,
                                   line, c);
                    free(buf);
                    return st;
                }
                lid = (int)v;
            }
            for (int j = 0; j < n_e; j++)
                if (ecol[j] == col) {
                    if (bad) { // c points into buf: format the message before freeing it
                        st = ep_errorf(EP_ERR_FORMAT,
                                       "%s:%ld: column %d: expected an expert id, found '%s'", path,
                                       line, col, c);
                        free(buf);
                        return st;
                    }
                    ex[j] = (int)v;
                    got++;
                }
        }
        if (got != n_e) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%ld: expected %d expert ids, found %d", path, line,
                           n_e, got);
            break;
        }
        if ((st = check_ids(path, line, ex, n_e, cfg->n_experts))) break;
        layer_add(layer_get(t, lid), cfg->k_base, ex, NULL, n_e, NULL);
    }
    free(buf);
    return st;
}

ep_status ep_trace_load(const char *path, const ep_model_cfg *cfg, int max_k, ep_trace **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) return ep_errorf(EP_ERR_IO, "--routes-from %s: cannot open: %s", path, strerror(errno));
    ep_trace *t = ep_xcalloc(1, sizeof *t);
    t->k_base = cfg->k_base;
    int c = fgetc(f);
    while (c == ' ' || c == '\n' || c == '\r' || c == '\t')
        c = fgetc(f);
    ungetc(c, f);
    ep_status st = c == '{' ? load_jsonl(f, path, cfg, max_k, t) : load_csv(f, path, cfg, max_k, t);
    fclose(f);
    if (!st && t->n_layers == 0) st = ep_errorf(EP_ERR_FORMAT, "%s: no routing rows found", path);
    if (st) {
        ep_trace_free(t);
        return st;
    }
    qsort(t->layers, (size_t)t->n_layers, sizeof *t->layers, cmp_layer);
    *out = t;
    return EP_OK;
}

void ep_trace_free(ep_trace *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_layers; i++) {
        free(t->layers[i].off);
        free(t->layers[i].expert);
        free(t->layers[i].weight);
        free(t->layers[i].base);
    }
    free(t->layers);
    free(t);
}

int ep_trace_rows(const ep_trace *t)
{
    int m = 0;
    for (int i = 0; i < t->n_layers; i++)
        m = EP_MAX(m, t->layers[i].n);
    return m;
}

int ep_trace_layers(const ep_trace *t)
{
    return t->n_layers;
}

void ep_trace_fill(const ep_trace *t, const ep_model_cfg *cfg, int layer, int64_t first, int T,
                   ep_routes *r)
{
    int moe_idx = layer - cfg->first_k_dense;
    const trace_layer *l = &t->layers[moe_idx % t->n_layers];
    EP_ASSERT(T <= r->cap_tokens);
    r->n_tokens = T;
    r->offsets[0] = 0;
    for (int i = 0; i < T; i++) {
        int row = (int)((first + i) % l->n);
        int b = l->off[row], k = l->off[row + 1] - b;
        EP_ASSERT(k <= r->max_k);
        memcpy(r->expert + r->offsets[i], l->expert + b, (size_t)k * sizeof(int));
        memcpy(r->weight + r->offsets[i], l->weight + b, (size_t)k * sizeof(float));
        memcpy(r->base_expert + (size_t)i * r->k_base, l->base + (size_t)row * r->k_base,
               (size_t)r->k_base * sizeof(int));
        for (int j = 0; j < r->k_base; j++)
            r->base_weight[(size_t)i * r->k_base + j] = 1.0f / r->k_base;
        r->offsets[i + 1] = r->offsets[i] + k;
    }
}
