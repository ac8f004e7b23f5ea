// Expert loads read from and written to a file, in the format of SGLang's
// expert-distribution dumps, so that a warm-up run of either system can seed
// the other's EPLB placement (cluster/placement.h).
#include "cluster/placement.h"
#include "common/json_util.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

ep_status ep_expert_load_read(const char *path, int n_layers, int n_experts, const bool *is_moe,
                              double **out)
{
    *out = NULL;
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f) return ep_errorf(EP_ERR_IO, "%s: cannot open the expert-load file", path);
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root) return ep_errorf(EP_ERR_FORMAT, "%s: line %d: %s", path, je.line, je.text);
    ep_status st = EP_OK;
    json_t *rows = json_object_get(root, "logical_count");
    const char *key;
    json_t *v;
    double *load = NULL;
    if (!json_is_object(root)) {
        st = ep_errorf(EP_ERR_CONFIG, "%s: expected an object with key 'logical_count'", path);
        goto done;
    }
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "logical_count")) {
            st =
                ep_errorf(EP_ERR_CONFIG,
                          "%s: unknown key '%s' (expected only 'logical_count', [layers][experts])",
                          path, key);
            goto done;
        }
    }
    if (!json_is_array(rows) || (int)json_array_size(rows) != n_layers) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s: 'logical_count': expected an array of %d rows (one per layer of the "
                       "model), found %s%zu",
                       path, n_layers, json_is_array(rows) ? "" : "no array, size ",
                       json_is_array(rows) ? json_array_size(rows) : (size_t)0);
        goto done;
    }
    load = ep_xcalloc((size_t)n_layers * (size_t)n_experts, sizeof(double));
    for (int l = 0; l < n_layers; l++) {
        json_t *row = json_array_get(rows, (size_t)l);
        if (!json_is_array(row) || (int)json_array_size(row) != n_experts) {
            st = ep_errorf(EP_ERR_CONFIG,
                           "%s: 'logical_count' row %d: expected an array of %d numbers (one per "
                           "expert), found %s of size %zu",
                           path, l, n_experts, json_is_array(row) ? "an array" : "another value",
                           json_is_array(row) ? json_array_size(row) : (size_t)0);
            goto done;
        }
        for (int x = 0; x < n_experts; x++) {
            json_t *e = json_array_get(row, (size_t)x);
            double d = json_is_number(e) ? json_number_value(e) : -1;
            if (!(d >= 0) || !isfinite(d)) {
                st = ep_errorf(EP_ERR_CONFIG,
                               "%s: 'logical_count'[%d][%d]: expected a finite number >= 0", path,
                               l, x);
                goto done;
            }
            if (is_moe && !is_moe[l] && d != 0) {
                st = ep_errorf(EP_ERR_CONFIG,
                               "%s: 'logical_count'[%d][%d] is %g, but layer %d is dense (its row "
                               "must be zeros)",
                               path, l, x, d, l);
                goto done;
            }
            load[(size_t)l * n_experts + x] = d;
        }
    }
    *out = load;
    load = NULL;
done:
    free(load);
    json_decref(root);
    return st;
}

ep_status ep_expert_load_write(const char *path, int n_layers, int n_experts, const int64_t *load)
{
    json_t *rows = json_array();
    for (int l = 0; l < n_layers; l++) {
        json_t *row = json_array();
        for (int x = 0; x < n_experts; x++)
            json_array_append_new(row, json_integer(load[(size_t)l * n_experts + x]));
        json_array_append_new(rows, row);
    }
    json_t *root = json_object();
    json_object_set_new(root, "logical_count", rows);
    ep_status st = ep_json_write_atomic(path, root, JSON_COMPACT);
    json_decref(root);
    return st;
}
