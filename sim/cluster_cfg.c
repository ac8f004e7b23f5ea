// Cluster presets for the simulator: reads configs/clusters/*.yaml (flat
// keys, see docs/scale.md), checks every value's range, finds presets by
// name. Only the description of the hardware lives here, no cost model.
#include "common/yaml_util.h"
#include "sim/sim.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Achievable fractions of peak when a preset does not say (docs/scale.md):
// large bf16 GEMMs reach ~60 % of the dense peak, streaming kernels ~80 % of
// HBM bandwidth, all-to-all ~75 % of NVLink and ~80 % of the NIC line rate.
#define EP_SIM_DEF_GEMM_EFF   0.6
#define EP_SIM_DEF_HBM_EFF    0.8
#define EP_SIM_DEF_NVLINK_EFF 0.75
#define EP_SIM_DEF_INTER_EFF  0.8
#define EP_SIM_DEF_MEM_USABLE 0.9 // vLLM's gpu_memory_utilization default

typedef struct {
    const char *key;
    bool required;
    bool is_int;
    double lo, hi;
    size_t off; // offsetof into ep_sim_cluster (double or int field)
} cluster_key;

#define KD(k, req, lo, hi, f)                                                                      \
    {                                                                                              \
        k, req, false, lo, hi, offsetof(ep_sim_cluster, f)                                         \
    }
#define KI(k, req, lo, hi, f)                                                                      \
    {                                                                                              \
        k, req, true, lo, hi, offsetof(ep_sim_cluster, f)                                          \
    }
static const cluster_key cluster_keys[] = {
    KI("nodes", true, 1, 4096, n_nodes),
    KI("gpus_per_node", true, 1, 64, gpus_per_node),
    KD("mem_gb", true, 0.001, 1e5, mem_gb),
    KD("hbm_GBps", true, 0.001, 1e6, hbm_GBps),
    KD("bf16_tflops", true, 0.001, 1e6, bf16_tflops),
    KD("nvlink_GBps", true, 0.001, 1e6, nvlink_GBps),
    KD("nvlink_latency_us", true, 0, 1e6, nvlink_latency_us),
    KD("inter_GBps", true, 0.001, 1e6, inter_GBps),
    KD("inter_latency_us", true, 0, 1e6, inter_latency_us),
    // Two-stage dispatch (simulate --dispatch hier): achieved rates.
    KD("hier_rdma_GBps", false, 0.001, 1e6, hier_rdma_GBps),
    KD("hier_rdma_latency_us", false, 0, 1e6, hier_rdma_latency_us),
    KD("hier_nvlink_GBps", false, 0.001, 1e6, hier_nvlink_GBps),
    KD("hier_nvlink_latency_us", false, 0, 1e6, hier_nvlink_latency_us),
    KD("gemm_efficiency", false, 0.001, 1, gemm_eff),
    KD("hbm_efficiency", false, 0.001, 1, hbm_eff),
    KD("nvlink_efficiency", false, 0.001, 1, nvlink_eff),
    KD("inter_efficiency", false, 0.001, 1, inter_eff),
    KD("mem_usable", false, 0.001, 1, mem_usable),
    // Extra expert slots per MoE layer for EPLB replicas (docs/scheduler.md);
    // whether a model can use them is checked where the placement is built.
    KI("redundant_experts", false, 0, 1 << 20, redundant_experts),
};

static bool is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static ep_status parse_doc(ep_yaml_doc *d, ep_sim_cluster *c)
{
    yaml_node_t *root = ep_yaml_root(d);
    char buf[96];
    if (!root || root->type != YAML_MAPPING_NODE)
        return ep_errorf(EP_ERR_CONFIG, "%s: expected a mapping of cluster keys, found %s", d->path,
                         root ? ep_yaml_describe(root, buf, sizeof buf) : "an empty file");
    bool seen[EP_ARRAY_LEN(cluster_keys)] = {0};
    bool seen_name = false, seen_gpu = false;
    ep_status st;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = ep_yaml_node(d, p->key), *v = ep_yaml_node(d, p->value);
        if (!k || k->type != YAML_SCALAR_NODE)
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: expected a key, found %s", d->path,
                             ep_yaml_line(k), ep_yaml_describe(k, buf, sizeof buf));
        const char *key = (const char *)k->data.scalar.value;
        if (!strcmp(key, "name") || !strcmp(key, "gpu")) {
            const char *s;
            if ((st = ep_yaml_str(d, v, key, &s))) return st;
            char *dst = key[0] == 'n' ? c->name : c->gpu;
            snprintf(dst, sizeof c->name, "%s", s);
            *(key[0] == 'n' ? &seen_name : &seen_gpu) = true;
            continue;
        }
        size_t i = 0;
        while (i < EP_ARRAY_LEN(cluster_keys) && strcmp(cluster_keys[i].key, key))
            i++;
        if (i == EP_ARRAY_LEN(cluster_keys))
            return ep_errorf(EP_ERR_CONFIG,
                             "%s:%d: unknown key '%s' (expected name, gpu, nodes, gpus_per_node, "
                             "mem_gb, hbm_GBps, bf16_tflops, nvlink_GBps, nvlink_latency_us, "
                             "inter_GBps, inter_latency_us, hier_rdma_GBps, hier_rdma_latency_us, "
                             "hier_nvlink_GBps, hier_nvlink_latency_us, *_efficiency, mem_usable, "
                             "redundant_experts)",
                             d->path, ep_yaml_line(k), key);
        const cluster_key *ck = &cluster_keys[i];
        if (seen[i])
            return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s' appears twice", d->path,
                             ep_yaml_line(k), key);
        seen[i] = true;
        char *field = (char *)c + ck->off;
        if (ck->is_int) {
            int64_t x;
            if ((st = ep_yaml_int(d, v, key, (int64_t)ck->lo, (int64_t)ck->hi, &x))) return st;
            *(int *)field = (int)x;
        } else {
            double x;
            if ((st = ep_yaml_double(d, v, key, &x))) return st;
            if (!(x >= ck->lo && x <= ck->hi))
                return ep_errorf(EP_ERR_CONFIG,
                                 "%s:%d: key '%s': expected a number in [%g, %g], "
                                 "found %g",
                                 d->path, ep_yaml_line(v), key, ck->lo, ck->hi, x);
            *(double *)field = x;
        }
    }
    if (!seen_name) return ep_errorf(EP_ERR_CONFIG, "%s: missing key 'name'", d->path);
    if (!seen_gpu) return ep_errorf(EP_ERR_CONFIG, "%s: missing key 'gpu'", d->path);
    for (size_t i = 0; i < EP_ARRAY_LEN(cluster_keys); i++)
        if (cluster_keys[i].required && !seen[i])
            return ep_errorf(EP_ERR_CONFIG, "%s: missing key '%s'", d->path, cluster_keys[i].key);
    return EP_OK;
}

static ep_status load_file(const char *path, ep_sim_cluster *c)
{
    const size_t len = strlen(path);
    if (len >= sizeof c->source)
        return ep_errorf(EP_ERR_ARG,
                         "cluster file %.80s...: a path of %zu bytes, expected under %zu", path,
                         len, sizeof c->source);
    memset(c, 0, sizeof *c);
    memcpy(c->source, path, len + 1);
    c->gemm_eff = EP_SIM_DEF_GEMM_EFF;
    c->hbm_eff = EP_SIM_DEF_HBM_EFF;
    c->nvlink_eff = EP_SIM_DEF_NVLINK_EFF;
    c->inter_eff = EP_SIM_DEF_INTER_EFF;
    c->mem_usable = EP_SIM_DEF_MEM_USABLE;
    c->hier_rdma_latency_us = c->hier_nvlink_latency_us = -1; // absent: the flat link's
    ep_yaml_doc d = {0};
    ep_status st = ep_yaml_load(path, &d);
    if (!st) st = parse_doc(&d, c);
    ep_yaml_free(&d);
    if (!st) {
        // Absent hier keys: the flat links' achievable rates and latencies.
        if (c->hier_rdma_GBps <= 0) c->hier_rdma_GBps = c->inter_GBps * c->inter_eff;
        if (c->hier_nvlink_GBps <= 0) c->hier_nvlink_GBps = c->nvlink_GBps * c->nvlink_eff;
        if (c->hier_rdma_latency_us < 0) c->hier_rdma_latency_us = c->inter_latency_us;
        if (c->hier_nvlink_latency_us < 0) c->hier_nvlink_latency_us = c->nvlink_latency_us;
    }
    if (!st) st = ep_sim_cluster_validate(c);
    return st;
}

ep_status ep_sim_cluster_validate(const ep_sim_cluster *c)
{
    const char *src = c->source[0] ? c->source : "cluster";
    if (c->n_nodes < 1 || c->gpus_per_node < 1)
        return ep_errorf(EP_ERR_CONFIG, "%s: nodes and gpus_per_node must be >= 1, found %d, %d",
                         src, c->n_nodes, c->gpus_per_node);
    const double v[] = {c->mem_gb,   c->hbm_GBps, c->bf16_tflops, c->nvlink_GBps, c->inter_GBps,
                        c->gemm_eff, c->hbm_eff,  c->nvlink_eff,  c->inter_eff,   c->mem_usable};
    for (size_t i = 0; i < EP_ARRAY_LEN(v); i++)
        if (!(v[i] > 0))
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: bandwidths, FLOP/s, memory and efficiencies must be > 0, "
                             "found %g (field %zu)",
                             src, v[i], i);
    if (c->redundant_experts < 0)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'redundant_experts': expected an integer >= 0, "
                         "found %d",
                         src, c->redundant_experts);
    if (c->nvlink_latency_us < 0 || c->inter_latency_us < 0 || c->hier_rdma_latency_us < 0 ||
        c->hier_nvlink_latency_us < 0 || c->hier_rdma_GBps < 0 || c->hier_nvlink_GBps < 0)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: latencies and hier bandwidths must be >= 0, found nvlink_latency_us "
                         "%g, inter_latency_us %g, hier_rdma_latency_us %g, hier_nvlink_latency_us "
                         "%g, hier_rdma_GBps %g, hier_nvlink_GBps %g",
                         src, c->nvlink_latency_us, c->inter_latency_us, c->hier_rdma_latency_us,
                         c->hier_nvlink_latency_us, c->hier_rdma_GBps, c->hier_nvlink_GBps);
    return EP_OK;
}

static void clusters_dir(char *buf, size_t n, int which)
{
    const char *env = getenv("EP_CONFIG_DIR");
    if (which == 0 && env && env[0])
        snprintf(buf, n, "%s/../clusters", env);
    else if (which == 1)
        snprintf(buf, n, "./configs/clusters");
    else
        snprintf(buf, n, "%s/configs/clusters", EP_SOURCE_DIR);
}

ep_status ep_sim_cluster_load(const char *spec, ep_sim_cluster *c)
{
    if (!spec || !spec[0])
        return ep_errorf(EP_ERR_ARG, "cluster: expected a preset name or YAML file, found \"\"");
    if (is_file(spec)) return load_file(spec, c);
    if (strchr(spec, '/') || strstr(spec, ".yaml"))
        return ep_errorf(EP_ERR_IO, "cluster %s: no such file", spec);
    char path[2048], dir[1536];
    for (int w = 0; w < 3; w++) {
        clusters_dir(dir, sizeof dir, w);
        if (w == 0 && !getenv("EP_CONFIG_DIR")) continue;
        snprintf(path, sizeof path, "%s/%s.yaml", dir, spec);
        if (is_file(path)) return load_file(path, c);
    }
    return ep_errorf(EP_ERR_ARG,
                     "cluster '%s': no such preset in ./configs/clusters or %s/configs/"
                     "clusters (presets: 1x8-h100, 2x8-h100, 4x8-h100, 8x8-h100 and the same for "
                     "h200)",
                     spec, EP_SOURCE_DIR);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

ep_status ep_sim_cluster_presets(char ***paths, int *n)
{
    *paths = NULL;
    *n = 0;
    char dir[1536];
    DIR *dh = NULL;
    for (int w = 0; w < 3 && !dh; w++) {
        if (w == 0 && !getenv("EP_CONFIG_DIR")) continue;
        clusters_dir(dir, sizeof dir, w);
        dh = opendir(dir);
    }
    if (!dh)
        return ep_errorf(EP_ERR_IO, "cluster presets: no configs/clusters directory in . or %s",
                         EP_SOURCE_DIR);
    char **list = NULL;
    int cnt = 0;
    struct dirent *de;
    while ((de = readdir(dh))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".yaml")) continue;
        list = ep_xrealloc(list, sizeof *list * (size_t)(cnt + 1));
        size_t pl = strlen(dir) + len + 2;
        list[cnt] = ep_xmalloc(pl);
        snprintf(list[cnt], pl, "%s/%s", dir, de->d_name);
        cnt++;
    }
    closedir(dh);
    if (cnt > 1) qsort(list, (size_t)cnt, sizeof *list, cmp_str);
    *paths = list;
    *n = cnt;
    return EP_OK;
}

void ep_sim_free_list(char **list, int n)
{
    if (!list) return;
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}
