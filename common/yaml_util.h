// Typed access to a libyaml document for epserve's config files: load with
// syntax errors reported as file:line:col, read scalars as int / uint64 /
// float / bool / string with messages that name the file, line, key path,
// what was expected and what was found. Knows no schema; callers own that.
#ifndef EP_YAML_UTIL_H
#define EP_YAML_UTIL_H

#include "common/ep.h"

#include <yaml.h>

typedef struct {
    yaml_document_t doc;
    bool loaded;
    char path[1024]; // for messages
} ep_yaml_doc;

// Parses the first document of `path`. EP_ERR_IO when the file cannot be
// opened, EP_ERR_FORMAT on a syntax error or when the file holds more than
// one document. An empty file loads fine and has no root (ep_yaml_root NULL).
ep_status ep_yaml_load(const char *path, ep_yaml_doc *d);
void ep_yaml_free(ep_yaml_doc *d); // safe on a zeroed or already freed doc
yaml_node_t *ep_yaml_root(ep_yaml_doc *d);
yaml_node_t *ep_yaml_node(ep_yaml_doc *d, int id);
int ep_yaml_line(const yaml_node_t *n); // 1-based

// Describes a node for "found ..." in messages: 'abc' (quoted text of a
// scalar, cut at 64 chars), "null", "a sequence", "a mapping".
const char *ep_yaml_describe(const yaml_node_t *n, char *buf, size_t len);
bool ep_yaml_is_null(const yaml_node_t *n);

// Scalar readers. `key` is the full dotted path used in messages
// ("moe.num_experts"). They fail with EP_ERR_CONFIG on a wrong type or a
// value outside [lo, hi]. Quoted scalars are strings, never numbers/bools.
ep_status ep_yaml_int(ep_yaml_doc *d, const yaml_node_t *n, const char *key, int64_t lo, int64_t hi,
                      int64_t *out);
ep_status ep_yaml_u64(ep_yaml_doc *d, const yaml_node_t *n, const char *key, uint64_t *out);
ep_status ep_yaml_double(ep_yaml_doc *d, const yaml_node_t *n, const char *key, double *out);
ep_status ep_yaml_bool(ep_yaml_doc *d, const yaml_node_t *n, const char *key, bool *out);
// A scalar as text (quoted or not; null is an error). *out points into the doc.
ep_status ep_yaml_str(ep_yaml_doc *d, const yaml_node_t *n, const char *key, const char **out);

#endif
