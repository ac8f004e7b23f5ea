// The routing YAML: a full good file, every kind of bad value with the
// message it must give (file, line, key, expected, found), the writer's
// round trip through the loader, the example configs, policies created from
// files, and `epserve route`'s logic (ep_route_file) against the router.
#include <dirent.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "router/policy.h"

static char dir[256];

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/ep_test_routing_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[600];
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
    if (d) closedir(d);
    rmdir(dir);
    return 0;
}

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

// 5 layers (layer 0 dense) x 16 experts, top-8.
static void model(ep_model_cfg *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "hand-model");
    m->arch = EP_ARCH_QWEN3_MOE;
    m->hidden = 16;
    m->n_layers = 5;
    m->n_experts = 16;
    m->k_base = 8;
    m->first_k_dense = 1;
    m->topk_method = EP_TOPK_GREEDY;
    m->n_group = m->topk_group = 1;
    m->norm_topk_prob = true;
    m->routed_scaling_factor = 1.0f;
}

static void row(char *buf, size_t n, int w, float base)
{
    size_t o = strlen(buf);
    o += snprintf(buf + o, n - o, "[");
    for (int j = 0; j < w; j++)
        o += snprintf(buf + o, n - o, "%s%g", j ? ", " : "", base + 0.25f * j);
    snprintf(buf + o, n - o, "]");
}

// ---- a good file -----------------------------------------------------------

static void test_load_good(void **state)
{
    char y[8192] = "policy: banpick\n"
                   "ban: {k_min: 4, lambda: 0.6, beta: 0.25, r_min: 0.3, r_max: 0.9,\n"
                   "      layer_sensitivity: [9.0, 0.12, 0.03, 0.5, 0.25], locality: true,\n"
                   "      locality_ratio: 0.75}\n"
                   "pick:\n"
                   "  strategy: A\n"
                   "  range: 3\n"
                   "  domain: code      # before the domains: resolved at the end\n"
                   "  domains:\n"
                   "    math: {key_experts: {1: [3, 7], 4: [15]}}\n"
                   "    code:\n"
                   "      key_experts: {2: [0]}\n"
                   "      frequency:\n"
                   "        - []\n";
    for (int l = 1; l < 5; l++) {
        strcat(y, "        - ");
        row(y, sizeof y, 16, (float)l);
        strcat(y, "\n");
    }
    strcat(y, "topp: {threshold: 0.65}\ndes:\n  k_lo: 3\n  k_hi: 7\n  median_ratio:\n    - []\n");
    for (int l = 1; l < 5; l++) {
        strcat(y, "    - ");
        row(y, sizeof y, 7, 1.0f + l);
        strcat(y, "\n");
    }
    ep_model_cfg m;
    model(&m);
    ep_routing_cfg rc;
    const char *path = write_file("good.yaml", y);
    ep_status st = ep_routing_cfg_load(path, &m, &rc);
    if (st) fail_msg("%s", ep_last_error());
    assert_int_equal(rc.policy, EP_POLICY_BANPICK);
    assert_int_equal(rc.ban.k_min, 4);
    assert_float_equal(rc.ban.lambda, 0.6f, 0.0);
    assert_float_equal(rc.ban.beta, 0.25f, 0.0);
    assert_float_equal(rc.ban.r_min, 0.3f, 0.0);
    assert_float_equal(rc.ban.r_max, 0.9f, 0.0);
    assert_int_equal(rc.ban.locality, EP_BAN_LOC_RANK); // `true` reads as rank
    assert_float_equal(rc.ban.locality_ratio, 0.75f, 0.0);
    assert_non_null(rc.ban.layer_sensitivity);
    assert_float_equal(rc.ban.layer_sensitivity[0], 9.0f, 0.0);
    assert_float_equal(rc.ban.layer_sensitivity[3], 0.5f, 0.0);
    assert_int_equal(rc.pick.strategy, EP_PICK_A);
    assert_int_equal(rc.pick.range, 3);
    assert_int_equal(rc.pick.n_domains, 2);
    assert_string_equal(rc.pick.domains[0].name, "math");
    assert_string_equal(rc.pick.domains[1].name, "code");
    assert_int_equal(rc.pick.domain, 1);
    assert_false(rc.pick.domain_auto);
    const uint8_t *km = rc.pick.domains[0].key;
    int nkeys = 0;
    for (int i = 0; i < 5 * 16; i++)
        nkeys += km[i];
    assert_int_equal(nkeys, 3);
    assert_true(km[1 * 16 + 3] && km[1 * 16 + 7] && km[4 * 16 + 15]);
    assert_null(rc.pick.domains[0].frequency);
    const float *fq = rc.pick.domains[1].frequency;
    assert_non_null(fq);
    assert_float_equal(fq[0], 0.0f, 0.0);                  // dense layer []
    assert_float_equal(fq[2 * 16 + 5], 2.0f + 1.25f, 0.0); // layer 2, expert 5
    assert_float_equal(rc.topp.threshold, 0.65f, 0.0);
    assert_int_equal(rc.des.k_lo, 3);
    assert_int_equal(rc.des.k_hi, 7);
    assert_float_equal(rc.des.median_ratio[0], 1.0f, 0.0); // dense layer []
    assert_float_equal(rc.des.median_ratio[3 * 7 + 2], 4.0f + 0.5f, 0.0);
    assert_string_equal(rc.source, path);
    // a policy from the file: banpick with A adds up to 2 keys (layer 1 of math)
    ep_policy *p;
    assert_int_equal(ep_policy_create(&m, path, &p), EP_OK);
    assert_string_equal(ep_policy_name(p), "banpick");
    assert_int_equal(ep_policy_max_k(p), 10);
    assert_int_equal(ep_policy_range(p), 3);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);

    // defaults for what a file leaves out: pick alone -> D, banpick -> C
    path =
        write_file("min.yaml", "policy: pick\npick: {domains: {math: {key_experts: {2: [5]}}}}\n");
    assert_int_equal(ep_routing_cfg_load(path, &m, &rc), EP_OK);
    assert_int_equal(rc.pick.strategy, EP_PICK_D);
    assert_int_equal(rc.pick.domain, 0); // no `domain`: the first listed
    assert_int_equal(rc.ban.k_min, 3);
    assert_float_equal(rc.ban.lambda, 0.7f, 0.0);
    assert_null(rc.ban.layer_sensitivity);
    ep_routing_cfg_free(&rc);
    path = write_file("min2.yaml", "policy: banpick\nban: {layer_sensitivity: null}\n"
                                   "pick: {domain: none, domains: {m: {key_experts: {}}}}\n");
    assert_int_equal(ep_routing_cfg_load(path, &m, &rc), EP_OK);
    assert_int_equal(rc.pick.strategy, EP_PICK_C);
    assert_int_equal(rc.pick.domain, -1);
    ep_routing_cfg_free(&rc);

    // `frequency` as a file next to the routing YAML
    char fy[4096] = "- []\n";
    for (int l = 1; l < 5; l++) {
        strcat(fy, "- ");
        row(fy, sizeof fy, 16, 0.5f);
        strcat(fy, "\n");
    }
    write_file("freq.yaml", fy);
    path =
        write_file("auto.yaml",
                   "policy: pick\npick: {domain: auto, domains: {math: {frequency: freq.yaml}}}\n");
    st = ep_routing_cfg_load(path, &m, &rc);
    if (st) fail_msg("%s", ep_last_error());
    assert_true(rc.pick.domain_auto);
    assert_int_equal(rc.pick.domain, -1);
    assert_float_equal(rc.pick.domains[0].frequency[3 * 16 + 2], 1.0f, 0.0);
    ep_routing_cfg_free(&rc);
}

// ---- bad files -------------------------------------------------------------

typedef struct {
    const char *yaml;
    ep_status st;
    const char *must[4]; // substrings of the message
} bad_case;

static void test_load_bad(void **state)
{
    static const bad_case cases[] = {
        {"policy: ban\nban: {lambda: 1.5}\n",
         EP_ERR_CONFIG,
         {":2: key 'ban.lambda'", "expected a number in (0, 1]", "found '1.5'"}},
        {"policy: ban\nban:\n  lambda: 0\n", EP_ERR_CONFIG, {":3: key 'ban.lambda'", "found '0'"}},
        {"policy: ban\nban: {lambda: [1]}\n", EP_ERR_CONFIG, {"ban.lambda", "found a list"}},
        {"policy: ban\nban: {k_min: 9}\n",
         EP_ERR_CONFIG,
         {"key 'ban.k_min'", "an integer in [1, k_base = 8]", "found '9'"}},
        {"policy: ban\nban: {k_min: 2.5}\n", EP_ERR_CONFIG, {"ban.k_min", "found '2.5'"}},
        {"policy: pick\npick: {domains: {math: {key_experts: {1: [3, 16]}}}}\n",
         EP_ERR_CONFIG,
         {"key 'pick.domains.math.key_experts.1'", "expert id in [0, 15]", "found '16'"}},
        {"policy: pick\npick: {domains: {math: {key_experts: {5: [3]}}}}\n",
         EP_ERR_CONFIG,
         {"pick.domains.math.key_experts", "MoE layer index in [1, 4]", "found '5'"}},
        {"policy: pick\npick: {domains: {math: {key_experts: {0: [3]}}}}\n",
         EP_ERR_CONFIG,
         {"key_experts", "MoE layer index in [1, 4]", "found '0'"}},
        {"policy: pick\npick: {domains: {math: {key_experts: {1: [3, 3]}}}}\n",
         EP_ERR_CONFIG,
         {"key_experts.1", "distinct", "3 twice"}},
        {"policy: pick\npick: {domains: {math: {key_experts: {1: 3}}}}\n",
         EP_ERR_CONFIG,
         {"key_experts.1", "a list of expert ids", "found '3'"}},
        {"policy: ban\nban: {layer_sensitivity: [0.1, 0.2, 0.3, 0.4]}\n",
         EP_ERR_CONFIG,
         {"key 'ban.layer_sensitivity'", "a list of 5 numbers", "found 4 entries"}},
        {"policy: ban\nban: {layer_sensitivity: [0.1, 0.2, x, 0.4, 0.5]}\n",
         EP_ERR_CONFIG,
         {"ban.layer_sensitivity[2]", "finite number", "found 'x'"}},
        {"policy: ban\nbann: {}\n",
         EP_ERR_CONFIG,
         {":2: unknown key 'bann'", "policy, ban, pick, topp, des"}},
        {"policy: ban\nban: {lamda: 0.5}\n",
         EP_ERR_CONFIG,
         {"unknown key 'ban.lamda'", "k_min, lambda"}},
        {"policy: pick\npick: {domains: {math: {keys: {}}}}\n",
         EP_ERR_CONFIG,
         {"unknown key 'pick.domains.math.keys'", "key_experts, frequency"}},
        {"policy: ban\nban: 3\n", EP_ERR_CONFIG, {"key 'ban'", "expected a mapping", "found '3'"}},
        {"policy: bann\n",
         EP_ERR_CONFIG,
         {":1: key 'policy'", "baseline, ban, pick", "found 'bann'"}},
        {"ban: {k_min: 3}\n", EP_ERR_CONFIG, {"key 'policy' missing"}},
        {"policy: ban\npolicy: pick\n",
         EP_ERR_CONFIG,
         {":2: key 'policy'", "found again (first on line 1)"}},
        {"policy: pick\npick: {domain: poetry, domains: {math: {}, code: {}}}\n",
         EP_ERR_CONFIG,
         {"key 'pick.domain'", "math, code", "found 'poetry'"}},
        {"policy: pick\npick: {domain: auto, domains: {math: {key_experts: {1: [2]}}}}\n",
         EP_ERR_CONFIG,
         {"pick.domain", "'auto' needs a domain with a 'frequency'"}},
        {"policy: pick\npick: {domains: {auto: {}}}\n",
         EP_ERR_CONFIG,
         {"pick.domains", "other than 'auto'", "found 'auto'"}},
        {"policy: pick\npick: {strategy: F}\n",
         EP_ERR_CONFIG,
         {"pick.strategy", "one of A, B, C, D, E", "found 'F'"}},
        {"policy: pick\npick: {range: 0}\n", EP_ERR_CONFIG, {"pick.range", "[1, 16]", "found '0'"}},
        {"policy: ban\nban: {r_min: 0.9, r_max: 0.5}\n",
         EP_ERR_CONFIG,
         {"'ban.r_min', 'ban.r_max'", "r_min <= r_max", "found r_min 0.9, r_max 0.5"}},
        {"policy: ban\nban: {locality: maybe}\n",
         EP_ERR_CONFIG,
         {"ban.locality", "false, true (= rank), rank or node", "'maybe'"}},
        {"policy: ban\nban: {locality: nodes}\n",
         EP_ERR_CONFIG,
         {"key 'ban.locality'", "rank or node", "found 'nodes'"}},
        {"policy: topp\ntopp: {threshold: 0}\n",
         EP_ERR_CONFIG,
         {"topp.threshold", "(0, 1]", "found '0'"}},
        {"policy: des\ndes: {k_lo: 6, k_hi: 5}\n",
         EP_ERR_CONFIG,
         {"'des.k_lo', 'des.k_hi'", "found k_lo 6, k_hi 5"}},
        {"policy: des\ndes: {k_hi: 9}\n", EP_ERR_CONFIG, {"des.k_hi", "k_base = 8", "found '9'"}},
        {"policy: des\ndes: {median_ratio: [[], [1,1,1], [], [], []]}\n",
         EP_ERR_CONFIG,
         {"des.median_ratio[1]", "a list of 7 numbers", "found 3 entries"}},
        {"policy: des\ndes: {median_ratio: [[], [1,1,1,0,1,1,1], [], [], []]}\n",
         EP_ERR_CONFIG,
         {"des.median_ratio[1][3]", "> 0", "found '0'"}},
        {"policy: des\ndes: {median_ratio: [[], [1,1,1,1,1,1,1]]}\n",
         EP_ERR_CONFIG,
         {"des.median_ratio", "5 lists", "found 2 rows"}},
        {"policy: pick\npick: {domains: {m: {frequency: [[], [1, 2]]}}}\n",
         EP_ERR_CONFIG,
         {"pick.domains.m.frequency", "found 2 rows"}},
        {"policy: pick\npick: {domains: {m: {frequency: [[], [], [], [], []]}}}\n",
         EP_ERR_CONFIG,
         {"pick.domains.m.frequency[1]", "a list of 16 numbers", "found 0 entries"}},
        {"policy: pick\npick: {domains: {m: {frequency: nofile.yaml}}}\n",
         EP_ERR_IO,
         {"key 'pick.domains.m.frequency'", "nofile.yaml", "cannot open"}},
        {"policy: ban\nban: {lambda: 0.5\n", EP_ERR_FORMAT, {"YAML syntax error"}},
        {"", EP_ERR_CONFIG, {"empty document"}},
        {"- policy\n", EP_ERR_CONFIG, {"(top level)", "a mapping", "found a list"}},
        {"policy: laser\nlaser: {after: laser}\n",
         EP_ERR_CONFIG,
         {":2: key 'laser.after'", "not laser", "found 'laser'"}},
        {"policy: laser\nlaser: {after: bann}\n",
         EP_ERR_CONFIG,
         {"key 'laser.after'", "baseline, ban", "found 'bann'"}},
        {"policy: laser\nlaser: {peak_ratio: 0.5}\n",
         EP_ERR_CONFIG,
         {"laser.peak_ratio", ">= 1", "found '0.5'"}},
        {"policy: laser\nlaser: {widen_ratio: 0}\n",
         EP_ERR_CONFIG,
         {"laser.widen_ratio", "(0, 1]", "found '0'"}},
        {"policy: laser\nlaser: {keep_top: 9}\n",
         EP_ERR_CONFIG,
         {"laser.keep_top", "[0, k_base = 8]", "found '9'"}},
        {"policy: laser\nlaser: {peek_ratio: 2}\n",
         EP_ERR_CONFIG,
         {"unknown key 'laser.peek_ratio'", "after, peak_ratio, widen_ratio, keep_top"}},
        {"policy: laser\nlaser: [ban]\n", EP_ERR_CONFIG, {"key 'laser'", "a mapping"}},
    };
    ep_model_cfg m;
    model(&m);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_file("bad.yaml", cases[i].yaml);
        ep_routing_cfg rc;
        ep_status st = ep_routing_cfg_load(path, &m, &rc);
        const char *msg = ep_last_error();
        if (st != cases[i].st)
            fail_msg("case %zu: status %d, want %d (%s)", i, st, cases[i].st, msg);
        if (!strstr(msg, path)) fail_msg("case %zu: message does not name the file: %s", i, msg);
        for (int j = 0; j < 4 && cases[i].must[j]; j++)
            if (!strstr(msg, cases[i].must[j]))
                fail_msg("case %zu: message lacks \"%s\": %s", i, cases[i].must[j], msg);
        assert_null(rc.pick.domains); // freed on error
        assert_null(rc.ban.layer_sensitivity);
    }
    ep_routing_cfg rc;
    assert_int_equal(ep_routing_cfg_load("/nonexistent/r.yaml", &m, &rc), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), "/nonexistent/r.yaml"));
}

// ---- the writer ------------------------------------------------------------

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return s;
}

static int count_dir(void)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void test_write_round_trip(void **state)
{
    ep_model_cfg m;
    model(&m);
    ep_routing_cfg rc, back;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BANPICK);
    rc.ban.k_min = 2;
    rc.ban.lambda = 0.55f;
    rc.ban.r_min = 0.123456789f;
    rc.ban.locality = EP_BAN_LOC_NODE;
    rc.ban.layer_sensitivity = malloc(5 * sizeof(float));
    for (int l = 0; l < 5; l++)
        rc.ban.layer_sensitivity[l] = 1.0f / (3.0f + l); // not short decimals
    rc.pick.strategy = EP_PICK_E;
    rc.pick.range = 3;
    int dm = ep_routing_cfg_add_domain(&rc, "math");
    int dc = ep_routing_cfg_add_domain(&rc, "code-v2");
    rc.pick.domains[dm].key[1 * 16 + 9] = 1;
    rc.pick.domains[dm].key[1 * 16 + 2] = 1;
    rc.pick.domains[dm].key[3 * 16 + 15] = 1;
    rc.pick.domains[dc].frequency = malloc(5 * 16 * sizeof(float));
    for (int i = 0; i < 80; i++)
        rc.pick.domains[dc].frequency[i] = (float)i / 7.0f;
    rc.pick.domain = dc;
    rc.topp.threshold = 0.9f;
    rc.des.k_lo = 2;
    rc.des.k_hi = 5;
    rc.des.median_ratio = malloc(5 * 7 * sizeof(float));
    for (int i = 0; i < 35; i++)
        rc.des.median_ratio[i] = 1.0f + (float)i / 11.0f;
    rc.laser.after = EP_POLICY_DES;
    rc.laser.peak_ratio = 1.0f / 0.3f; // not a short decimal
    rc.laser.widen_ratio = 0.625f;
    rc.laser.keep_top = 0;

    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/profile.yaml", dir);
    snprintf(p2, sizeof p2, "%s/profile2.yaml", dir);
    int before = count_dir();
    assert_int_equal(ep_routing_cfg_write(&rc, &m, p1), EP_OK);
    assert_int_equal(count_dir(), before + 1); // no temporary file left behind
    ep_status st = ep_routing_cfg_load(p1, &m, &back);
    if (st) fail_msg("%s", ep_last_error());
    assert_int_equal(back.policy, rc.policy);
    assert_int_equal(back.ban.k_min, 2);
    assert_int_equal(back.ban.locality, EP_BAN_LOC_NODE);
    assert_true(back.ban.lambda == rc.ban.lambda && back.ban.r_min == rc.ban.r_min);
    assert_memory_equal(back.ban.layer_sensitivity, rc.ban.layer_sensitivity, 5 * sizeof(float));
    assert_int_equal(back.pick.strategy, EP_PICK_E);
    assert_int_equal(back.pick.range, 3);
    assert_int_equal(back.pick.n_domains, 2);
    assert_int_equal(back.pick.domain, dc);
    for (int d = 0; d < 2; d++) {
        assert_string_equal(back.pick.domains[d].name, rc.pick.domains[d].name);
        assert_memory_equal(back.pick.domains[d].key, rc.pick.domains[d].key, 80);
    }
    assert_null(back.pick.domains[dm].frequency);
    assert_memory_equal(back.pick.domains[dc].frequency, rc.pick.domains[dc].frequency,
                        80 * sizeof(float));
    assert_true(back.topp.threshold == rc.topp.threshold);
    assert_int_equal(back.des.k_lo, 2);
    assert_int_equal(back.des.k_hi, 5);
    assert_memory_equal(back.des.median_ratio, rc.des.median_ratio, 35 * sizeof(float));
    assert_int_equal(back.laser.after, EP_POLICY_DES);
    assert_true(back.laser.peak_ratio == rc.laser.peak_ratio);
    assert_true(back.laser.widen_ratio == rc.laser.widen_ratio);
    assert_int_equal(back.laser.keep_top, 0);
    // writing what was read gives the same bytes
    assert_int_equal(ep_routing_cfg_write(&back, &m, p2), EP_OK);
    char *a = slurp(p1), *b = slurp(p2);
    assert_string_equal(a, b);
    free(a);
    free(b);
    // auto domain round-trips too
    back.pick.domain_auto = true;
    back.pick.domain = -1;
    assert_int_equal(ep_routing_cfg_write(&back, &m, p2), EP_OK);
    ep_routing_cfg_free(&back);
    assert_int_equal(ep_routing_cfg_load(p2, &m, &back), EP_OK);
    assert_true(back.pick.domain_auto);
    ep_routing_cfg_free(&back);
    // an invalid config is refused and the old file stays
    rc.ban.lambda = 2.0f;
    a = slurp(p1);
    assert_int_equal(ep_routing_cfg_write(&rc, &m, p1), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "ban.lambda"));
    b = slurp(p1);
    assert_string_equal(a, b);
    free(a);
    free(b);
    // an unwritable place is an I/O error naming the path
    rc.ban.lambda = 0.5f;
    assert_int_equal(ep_routing_cfg_write(&rc, &m, "/nonexistent/dir/p.yaml"), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), "/nonexistent/dir/p.yaml"));
    ep_routing_cfg_free(&rc);
    ep_routing_cfg_free(NULL);
}

// ---- the example configs ---------------------------------------------------

static void dims(ep_model_cfg *m, const char *name, int L, int E, int k, int dense)
{
    model(m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->n_layers = L;
    m->n_experts = E;
    m->k_base = k;
    m->first_k_dense = dense;
}

static void test_examples(void **state)
{
    ep_model_cfg q30, q235, ds, tiny;
    dims(&q30, "qwen3-30b-a3b", 48, 128, 8, 0);
    dims(&q235, "qwen3-235b-a22b", 94, 128, 8, 0);
    dims(&ds, "deepseek-v2.5", 60, 160, 6, 1);
    dims(&tiny, "tiny-qwen3-moe", 4, 64, 8, 0);
    glob_t g;
    assert_int_equal(glob(EP_SOURCE_DIR "/configs/routing/*.yaml", 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 5);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *base = strrchr(g.gl_pathv[i], '/') + 1;
        const ep_model_cfg *ms[3] = {&q30, NULL, NULL};
        if (strncmp(base, "qwen3-30b-a3b", 13) != 0) {
            ms[1] = &ds;
            ms[2] = &tiny;
        }
        for (int j = 0; j < 3 && ms[j]; j++) {
            ep_policy *p;
            ep_status st = ep_policy_create(ms[j], g.gl_pathv[i], &p);
            if (st) fail_msg("%s for %s: %s", base, ms[j]->name, ep_last_error());
            ep_policy_free(p);
        }
    }
    globfree(&g);
    // model-specific files are refused for another model, naming the key
    ep_policy *p;
    assert_int_equal(
        ep_policy_create(&tiny, EP_SOURCE_DIR "/configs/routing/qwen3-30b-a3b-banpick.yaml", &p),
        EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "key_experts"));
    // a preset name resolves to configs/routing/<name>.yaml
    assert_int_equal(ep_policy_create(&q235, "ban-local", &p), EP_OK);
    assert_int_equal(p->cfg.ban.locality, EP_BAN_LOC_RANK); // `true` keeps its meaning
    ep_policy_free(p);
    assert_int_equal(ep_policy_create(&q235, "ban-node", &p), EP_OK);
    assert_int_equal(p->cfg.ban.locality, EP_BAN_LOC_NODE);
    ep_policy_free(p);
}

// ---- ep_route_file (`epserve route`) ---------------------------------------

static uint64_t rng = 99;
static float frand(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) * (1.0 / (1ULL << 24))) * 6.0f - 3.0f;
}

static const char *write_logits(const char *name, const float *v, size_t n)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(v, sizeof(float), n, f), n); // the test host is little-endian
    fclose(f);
    return path;
}

static void test_route_file(void **state)
{
    ep_model_cfg m;
    dims(&m, "hand-model", 3, 13, 5, 1);
    enum { T = 11, E = 13 };
    float lg[T * E];
    for (int i = 0; i < T * E; i++)
        lg[i] = frand();
    char in[512], out[512];
    snprintf(in, sizeof in, "%s", write_logits("logits.f32", lg, T * E));
    snprintf(out, sizeof out, "%s/routes.jsonl", dir);
    ep_policy *p;
    assert_int_equal(ep_policy_create(&m, "ban", &p), EP_OK);
    ep_status st = ep_route_file(&m, p, 2, in, T, out);
    if (st) fail_msg("%s", ep_last_error());

    ep_router *r;
    ep_routes want;
    assert_int_equal(ep_router_init(&m, T, &r), EP_OK);
    ep_routes_init(&want, T, ep_policy_max_k(p), m.k_base);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 2, lg, T, &want), EP_OK);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0, nnz_total = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        if (!o) fail_msg("line %d: %s", n, err.text);
        assert_int_equal(json_integer_value(json_object_get(o, "token")), n);
        int k = (int)json_integer_value(json_object_get(o, "k"));
        assert_int_equal(k, ep_routes_k(&want, n));
        json_t *ex = json_object_get(o, "experts"), *wt = json_object_get(o, "weights");
        assert_int_equal(json_array_size(ex), (size_t)k);
        assert_int_equal(json_array_size(wt), (size_t)k);
        for (int j = 0; j < k; j++) {
            int o2 = want.offsets[n] + j;
            assert_int_equal(json_integer_value(json_array_get(ex, j)), want.expert[o2]);
            assert_true((float)json_number_value(json_array_get(wt, j)) == want.weight[o2]);
        }
        nnz_total += k;
        json_decref(o);
        n++;
    }
    fclose(f);
    assert_int_equal(n, T);
    assert_int_equal(nnz_total, ep_routes_nnz(&want));
    assert_true(nnz_total < T * m.k_base); // Ban dropped something on random logits

    // size mismatch: names the file, expected and found sizes; no output written
    char out2[512];
    snprintf(out2, sizeof out2, "%s/never.jsonl", dir);
    assert_int_equal(ep_route_file(&m, p, 2, in, T + 1, out2), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), in));
    assert_non_null(
        strstr(ep_last_error(), "expected 12 tokens x 13 experts x 4 bytes = 624 bytes"));
    assert_non_null(strstr(ep_last_error(), "found 572 bytes"));
    assert_int_equal(access(out2, F_OK), -1);
    // a dense layer
    assert_int_equal(ep_route_file(&m, p, 0, in, T, out2), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "--layer"));
    // a non-finite logit
    lg[3 * E + 4] = NAN;
    snprintf(in, sizeof in, "%s", write_logits("nan.f32", lg, T * E));
    assert_int_equal(ep_route_file(&m, p, 1, in, T, out2), EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "token 3 expert 4"));
    assert_int_equal(access(out2, F_OK), -1);
    // T = 0: an empty input gives an empty output
    snprintf(in, sizeof in, "%s", write_logits("empty.f32", lg, 0));
    assert_int_equal(ep_route_file(&m, p, 1, in, 0, out2), EP_OK);
    struct stat sb;
    assert_int_equal(stat(out2, &sb), 0);
    assert_int_equal(sb.st_size, 0);
    // a missing input
    assert_int_equal(ep_route_file(&m, p, 1, "/nonexistent/x.f32", 1, out2), EP_ERR_IO);
    ep_routes_free(&want);
    ep_router_free(r);
    ep_policy_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_good),        cmocka_unit_test(test_load_bad),
        cmocka_unit_test(test_write_round_trip), cmocka_unit_test(test_examples),
        cmocka_unit_test(test_route_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
