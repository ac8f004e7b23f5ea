// Charts for `epserve bench --plot DIR`: writes whitespace-separated .dat
// tables and one gnuplot script per chart, then runs gnuplot (pngcairo, or
// png where cairo is missing). Reads only the JSON result, so a chart always
// shows the same numbers as the table and the JSON.
#include "app/bench_plot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static ep_status open_out(const char *dir, const char *name, FILE **f, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", dir, name);
    *f = fopen(path, "w");
    if (!*f) return ep_errorf(EP_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return EP_OK;
}

static ep_status run_gnuplot(const char *script)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", script);
    FILE *p = popen(cmd, "r");
    if (!p) return ep_errorf(EP_ERR_IO, "cannot start gnuplot for %s", script);
    char line[512], first[512] = "";
    while (fgets(line, sizeof line, p))
        if (!first[0]) snprintf(first, sizeof first, "%s", line);
    int rc = pclose(p);
    if (rc != 0) {
        if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
            return ep_errorf(EP_ERR_UNSUPPORTED,
                             "--plot needs gnuplot (Debian: gnuplot-nox); not found on PATH");
        return ep_errorf(EP_ERR_IO, "gnuplot %s failed: %s", script, first);
    }
    return EP_OK;
}

// Common script head: terminal, output, title.
static void script_head(FILE *g, const char *dir, const char *png, const char *title)
{
    fprintf(g,
            "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1000,560 "
            "font ',11' } else { set terminal png size 1000,560 }\n");
    fprintf(g, "set termoption noenhanced\n");
    fprintf(g, "set output '%s/%s'\nset title \"%s\"\nset grid ytics\nset key outside right\n", dir,
            png, title);
}

static ep_status plot_bytes(const json_t *res, const char *dir)
{
    const json_t *pols = json_object_get(res, "policies");
    FILE *d = NULL, *g = NULL;
    char dpath[4096], gpath[4096];
    ep_status st = open_out(dir, "bytes_per_layer.dat", &d, dpath, sizeof dpath);
    if (st) return st;
    // Columns: layer, baseline (counterfactual of the first policy), then each policy.
    const json_t *pl0 = json_object_get(json_array_get(pols, 0), "per_layer");
    size_t n_layers = json_array_size(json_object_get(pl0, "layer"));
    fprintf(d, "# layer fixed_k_base");
    for (size_t i = 0; i < json_array_size(pols); i++)
        fprintf(d, " %s", json_string_value(json_object_get(json_array_get(pols, i), "name")));
    fprintf(d, "   (MB: dispatch + combine, all ranks and timed steps)\n");
    for (size_t j = 0; j < n_layers; j++) {
#define PL(p, k) json_array_get(json_object_get(json_object_get(p, "per_layer"), k), j)
        const json_t *p0 = json_array_get(pols, 0);
        fprintf(d, "%lld %.6f", (long long)json_integer_value(PL(p0, "layer")),
                (json_integer_value(PL(p0, "baseline_dispatch_bytes")) +
                 json_integer_value(PL(p0, "baseline_combine_bytes"))) /
                    1e6);
        for (size_t i = 0; i < json_array_size(pols); i++) {
            const json_t *p = json_array_get(pols, i);
            fprintf(d, " %.6f",
                    (json_integer_value(PL(p, "dispatch_bytes")) +
                     json_integer_value(PL(p, "combine_bytes"))) /
                        1e6);
        }
        fprintf(d, "\n");
#undef PL
    }
    fclose(d);
    if ((st = open_out(dir, "bytes_per_layer.gp", &g, gpath, sizeof gpath))) return st;
    char title[256];
    snprintf(title, sizeof title, "%s: all-to-all bytes per MoE layer, %lld ranks",
             json_string_value(json_object_get(res, "model")),
             (long long)json_integer_value(json_object_get(res, "world_size")));
    script_head(g, dir, "bytes_per_layer.png", title);
    fprintf(g, "set xlabel 'layer'\nset xtics 1\nset ylabel 'MB (dispatch + combine)'\nset yrange "
               "[0:*]\n");
    fprintf(g, "plot '%s' using 1:2 with linespoints lw 3 dt 2 title 'fixed top-k_base'", dpath);
    for (size_t i = 0; i < json_array_size(pols); i++)
        fprintf(g, ", '' using 1:%zu with linespoints lw 2 title '%s'", i + 3,
                json_string_value(json_object_get(json_array_get(pols, i), "name")));
    fprintf(g, "\n");
    fclose(g);
    return run_gnuplot(gpath);
}

// A clustered histogram of the .dat at dpath (column 1: x labels, then one
// column per policy) into dir/<stem>.png, with its script dir/<stem>.gp.
static ep_status plot_clustered(const json_t *pols, const char *dir, const char *stem,
                                const char *dpath, const char *title, const char *xlabel,
                                const char *ylabel)
{
    FILE *g = NULL;
    char gname[256], png[256], gpath[4096];
    snprintf(gname, sizeof gname, "%s.gp", stem);
    snprintf(png, sizeof png, "%s.png", stem);
    ep_status st = open_out(dir, gname, &g, gpath, sizeof gpath);
    if (st) return st;
    script_head(g, dir, png, title);
    fprintf(g,
            "set style data histograms\nset style histogram clustered gap 1\n"
            "set style fill solid 0.85 border -1\nset boxwidth 0.9\n"
            "set xlabel '%s'\nset ylabel '%s'\nset yrange [0:*]\n",
            xlabel, ylabel);
    fprintf(g, "plot '%s' using 2:xtic(1) title '%s'", dpath,
            json_string_value(json_object_get(json_array_get(pols, 0), "name")));
    for (size_t i = 1; i < json_array_size(pols); i++)
        fprintf(g, ", '' using %zu title '%s'", i + 2,
                json_string_value(json_object_get(json_array_get(pols, i), "name")));
    fprintf(g, "\n");
    fclose(g);
    return run_gnuplot(gpath);
}

static ep_status plot_k_hist(const json_t *res, const char *dir)
{
    const json_t *pols = json_object_get(res, "policies");
    FILE *d = NULL;
    char dpath[4096];
    ep_status st = open_out(dir, "k_hist.dat", &d, dpath, sizeof dpath);
    if (st) return st;
    size_t max_k = 0;
    for (size_t i = 0; i < json_array_size(pols); i++) {
        size_t n = json_array_size(json_object_get(json_array_get(pols, i), "k_hist"));
        if (n > max_k) max_k = n;
    }
    fprintf(d, "# K then, per policy, the fraction of (token, layer) routings with that K\n");
    for (size_t k = 1; k < max_k; k++) {
        fprintf(d, "%zu", k);
        for (size_t i = 0; i < json_array_size(pols); i++) {
            const json_t *h = json_object_get(json_array_get(pols, i), "k_hist");
            double tot = 0;
            for (size_t q = 0; q < json_array_size(h); q++)
                tot += (double)json_integer_value(json_array_get(h, q));
            double v =
                k < json_array_size(h) ? (double)json_integer_value(json_array_get(h, k)) : 0;
            fprintf(d, " %.6f", tot > 0 ? v / tot : 0);
        }
        fprintf(d, "\n");
    }
    fclose(d);
    char title[256];
    snprintf(title, sizeof title, "%s: experts kept per token (K), k_base = %lld",
             json_string_value(json_object_get(res, "model")),
             (long long)json_integer_value(json_object_get(res, "k_base")));
    return plot_clustered(pols, dir, "k_hist", dpath, title, "K",
                          "fraction of token-layer routings");
}

static ep_status plot_rank_load(const json_t *res, const char *dir)
{
    const json_t *pols = json_object_get(res, "policies");
    FILE *d = NULL;
    char dpath[4096];
    ep_status st = open_out(dir, "rank_load.dat", &d, dpath, sizeof dpath);
    if (st) return st;
    size_t world = (size_t)json_integer_value(json_object_get(res, "world_size"));
    fprintf(d, "# rank then, per policy, (token, expert) pairs computed on that rank\n");
    for (size_t r = 0; r < world; r++) {
        fprintf(d, "%zu", r);
        for (size_t i = 0; i < json_array_size(pols); i++) {
            const json_t *v = json_object_get(json_array_get(pols, i), "rank_load");
            fprintf(d, " %lld", (long long)json_integer_value(json_array_get(v, r)));
        }
        fprintf(d, "\n");
    }
    fclose(d);
    char title[256];
    snprintf(title, sizeof title, "%s: load per rank ((token, expert) pairs computed)",
             json_string_value(json_object_get(res, "model")));
    return plot_clustered(pols, dir, "rank_load", dpath, title, "rank", "pairs");
}

ep_status ep_bench_plot(const json_t *results, const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ep_errorf(EP_ERR_IO, "--plot %s: cannot create the directory: %s", dir,
                         strerror(errno));
    if (json_array_size(json_object_get(results, "policies")) == 0)
        return ep_errorf(EP_ERR_ARG, "--plot: no policy results to plot");
    ep_status st;
    if ((st = plot_bytes(results, dir))) return st;
    if ((st = plot_k_hist(results, dir))) return st;
    return plot_rank_load(results, dir);
}
