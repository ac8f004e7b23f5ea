// libyaml document loading and typed scalar reads with precise messages.
// Plain scalars follow YAML's core schema for null/bool/int/float; anything
// quoted is a string. Schemas (which keys exist) live with their callers.
#include "common/yaml_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ep_status ep_yaml_load(const char *path, ep_yaml_doc *d)
{
    memset(d, 0, sizeof *d);
    size_t plen = strlen(path) < sizeof d->path ? strlen(path) : sizeof d->path - 1;
    memcpy(d->path, path, plen); // a longer path is cut: it only labels messages
    d->path[plen] = '\0';
    FILE *fp = fopen(path, "rb");
    if (!fp) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(fp);
        return ep_errorf(EP_ERR_NOMEM, "%s: cannot initialise the YAML parser", path);
    }
    yaml_parser_set_input_file(&parser, fp);
    ep_status st = EP_OK;
    if (!yaml_parser_load(&parser, &d->doc)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s:%zu:%zu: YAML syntax error: %s%s%s", path,
                       parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                       parser.problem ? parser.problem : "unknown problem",
                       parser.context ? " " : "", parser.context ? parser.context : "");
    } else {
        d->loaded = true;
        // A second document would be silently ignored: refuse it instead.
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%zu:%zu: YAML syntax error: %s", path,
                           parser.problem_mark.line + 1, parser.problem_mark.column + 1,
                           parser.problem ? parser.problem : "unknown problem");
        } else {
            yaml_node_t *r = yaml_document_get_root_node(&next);
            if (r)
                st = ep_errorf(EP_ERR_FORMAT,
                               "%s:%zu: expected a single YAML document, found a second one", path,
                               r->start_mark.line + 1);
            yaml_document_delete(&next);
        }
    }
    yaml_parser_delete(&parser);
    fclose(fp);
    if (st != EP_OK) ep_yaml_free(d);
    return st;
}

void ep_yaml_free(ep_yaml_doc *d)
{
    if (d && d->loaded) {
        yaml_document_delete(&d->doc);
        d->loaded = false;
    }
}

yaml_node_t *ep_yaml_root(ep_yaml_doc *d)
{
    return d->loaded ? yaml_document_get_root_node(&d->doc) : NULL;
}

yaml_node_t *ep_yaml_node(ep_yaml_doc *d, int id)
{
    return yaml_document_get_node(&d->doc, id);
}

int ep_yaml_line(const yaml_node_t *n)
{
    return n ? (int)n->start_mark.line + 1 : 0;
}

static bool is_plain(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static const char *sval(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

bool ep_yaml_is_null(const yaml_node_t *n)
{
    if (!n) return true;
    if (!is_plain(n)) return false;
    const char *s = sval(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

const char *ep_yaml_describe(const yaml_node_t *n, char *buf, size_t len)
{
    if (!n || ep_yaml_is_null(n)) {
        snprintf(buf, len, "null");
    } else if (n->type == YAML_SEQUENCE_NODE) {
        snprintf(buf, len, "a sequence");
    } else if (n->type == YAML_MAPPING_NODE) {
        snprintf(buf, len, "a mapping");
    } else {
        const char *q = is_plain(n) ? "'" : "quoted string '";
        size_t vl = n->data.scalar.length;
        snprintf(buf, len, "%s%.*s%s'", q, (int)(vl > 64 ? 64 : vl), sval(n), vl > 64 ? "..." : "");
    }
    return buf;
}

static ep_status type_error(ep_yaml_doc *d, const yaml_node_t *n, const char *key,
                            const char *expected)
{
    char found[128];
    return ep_errorf(EP_ERR_CONFIG, "%s:%d: key '%s': expected %s, found %s", d->path,
                     ep_yaml_line(n), key, expected, ep_yaml_describe(n, found, sizeof found));
}

static bool parse_int(const char *s, int64_t *out)
{
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!*p) return false;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return false;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return false;
    *out = v;
    return true;
}

ep_status ep_yaml_int(ep_yaml_doc *d, const yaml_node_t *n, const char *key, int64_t lo, int64_t hi,
                      int64_t *out)
{
    int64_t v;
    if (!n || !is_plain(n) || ep_yaml_is_null(n) || !parse_int(sval(n), &v))
        return type_error(d, n, key, "an integer");
    if (v < lo || v > hi)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s:%d: key '%s': expected an integer in [%lld, %lld], found %lld",
                         d->path, ep_yaml_line(n), key, (long long)lo, (long long)hi, (long long)v);
    *out = v;
    return EP_OK;
}

ep_status ep_yaml_u64(ep_yaml_doc *d, const yaml_node_t *n, const char *key, uint64_t *out)
{
    if (!n || !is_plain(n) || ep_yaml_is_null(n))
        return type_error(d, n, key, "an unsigned 64-bit integer");
    const char *s = sval(n);
    const char *p = s[0] == '+' ? s + 1 : s;
    bool ok = *p != '\0';
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') ok = false;
    if (!ok) return type_error(d, n, key, "an unsigned 64-bit integer");
    errno = 0;
    unsigned long long v = strtoull(p, NULL, 10);
    if (errno == ERANGE)
        return type_error(d, n, key, "an unsigned 64-bit integer (at most 2^64-1)");
    *out = v;
    return EP_OK;
}

ep_status ep_yaml_double(ep_yaml_doc *d, const yaml_node_t *n, const char *key, double *out)
{
    if (!n || !is_plain(n) || ep_yaml_is_null(n)) return type_error(d, n, key, "a number");
    const char *s = sval(n);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    // strtod also reads "nan", "inf" and hex floats; configs need finite decimals.
    if (end == s || *end != '\0' || !isfinite(v) || errno == ERANGE || strpbrk(s, "xXnN"))
        return type_error(d, n, key, "a finite number");
    *out = v;
    return EP_OK;
}

ep_status ep_yaml_bool(ep_yaml_doc *d, const yaml_node_t *n, const char *key, bool *out)
{
    if (n && is_plain(n)) {
        const char *s = sval(n);
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
            *out = true;
            return EP_OK;
        }
        if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
            *out = false;
            return EP_OK;
        }
    }
    return type_error(d, n, key, "a boolean (true or false)");
}

ep_status ep_yaml_str(ep_yaml_doc *d, const yaml_node_t *n, const char *key, const char **out)
{
    if (!n || n->type != YAML_SCALAR_NODE || ep_yaml_is_null(n))
        return type_error(d, n, key, "a string");
    *out = sval(n);
    return EP_OK;
}
