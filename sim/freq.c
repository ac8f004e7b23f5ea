// Per-layer expert frequencies as a routing source (sim/freq.h): the CSV
// reader and the Gumbel-perturbed logits shared by `bench sched` and
// `simulate`.
#include "sim/freq.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ep_status ep_freq_load(const char *path, const char *language, int E, double **freq, int *n_rows)
{
    FILE *f = fopen(path, "r");
    if (!f) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    long ln = 0;
    int n = 0;
    double *out = NULL;
    ep_status st = EP_OK;
    while (getline(&line, &cap, f) > 0) {
        ln++;
        if (ln == 1) continue; // header: Layer,Language,Expert_0..
        char *save = NULL, *tok = strtok_r(line, ",\n\r", &save);
        if (!tok) continue;
        int layer = (int)strtol(tok, NULL, 10);
        char *lang = strtok_r(NULL, ",\n\r", &save);
        if (!lang || strcmp(lang, language)) continue;
        if (layer != n) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%ld: layer %d, expected %d (layers in order)", path,
                           ln, layer, n);
            break;
        }
        out = ep_xrealloc(out, (size_t)(n + 1) * E * sizeof(double));
        int e = 0;
        for (char *v = strtok_r(NULL, ",\n\r", &save); v; v = strtok_r(NULL, ",\n\r", &save)) {
            if (e == E) break;
            out[(size_t)n * E + e++] = strtod(v, NULL);
        }
        if (e != E || strtok_r(NULL, ",\n\r", &save)) {
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s:%ld: expected %d expert columns (the model's), found %s", path, ln,
                           E, e != E ? "fewer" : "more");
            break;
        }
        n++;
    }
    free(line);
    fclose(f);
    if (!st && n == 0)
        st = ep_errorf(EP_ERR_FORMAT, "%s: no rows for language '%s'", path, language);
    if (st) {
        free(out);
        return st;
    }
    *freq = out;
    *n_rows = n;
    return EP_OK;
}

uint64_t ep_freq_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ep_freq_logits(const double *fq, int E, int T, double temp, uint64_t *rng, float *logits)
{
    for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++) {
            double u = ((ep_freq_rng(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
            double g = -log(-log(u));
            logits[(size_t)t * E + e] = (float)((log(fq[e] + 1e-6) + g) / temp);
        }
}

int ep_freq_row(int m, int n_moe, int n_rows)
{
    if (n_moe <= 1 || n_rows <= 1) return 0;
    return (int)lround((double)m * (n_rows - 1) / (n_moe - 1));
}
