// The Jinja subset (model/jinja.h), construct by construct: every entry of
// tests/data/chat_template/constructs.json (made by
// tests/e2e/chat_template/constructs.py from what python3-jinja2 renders;
// the parity test checks the file is still what Jinja2 gives) renders to
// Jinja2's exact text, or fails with the expected message (a Jinja2 error,
// a construct outside the subset, a limit). Then what the file cannot say:
// parse-time versus render-time refusal and their status codes, line
// numbers, a template shared by threads, API edges.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/jinja.h"

// Renders src with vars (JSON text); returns the text or NULL (message in ep_last_error).
static char *render(const char *src, const char *vars, ep_status *st_out)
{
    ep_jinja *t;
    ep_status st = ep_jinja_parse(src, strlen(src), "t", &t);
    char *out = NULL;
    if (!st) {
        json_t *v = json_loads(vars ? vars : "{}", 0, NULL);
        assert_non_null(v);
        st = ep_jinja_render(t, v, &out, NULL);
        json_decref(v);
        ep_jinja_free(t);
    }
    if (st_out) *st_out = st;
    return st ? NULL : out;
}

static void test_constructs(void **state)
{
    (void)state;
    const char *dir = getenv("EP_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/chat_template/constructs.json", dir ? dir : "tests/data");
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    if (!all) fprintf(stderr, "%s: %s\n", path, je.text);
    assert_non_null(all);
    size_t n = json_array_size(all), bad = 0, texts = 0, errors = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(all, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *tmpl = json_object_get(c, "template");
        json_t *want = json_object_get(c, "text");
        const char *needle = json_string_value(json_object_get(c, "error"));
        ep_jinja *t = NULL;
        char *out = NULL;
        size_t len = 0;
        ep_status st = ep_jinja_parse(json_string_value(tmpl), json_string_length(tmpl), "t", &t);
        if (!st) st = ep_jinja_render(t, json_object_get(c, "vars"), &out, &len);
        ep_jinja_free(t);
        if (want) {
            texts++;
            if (st || len != json_string_length(want) ||
                memcmp(out, json_string_value(want), len)) {
                bad++;
                fprintf(stderr, "MISMATCH %s\n  template: %s\n  jinja2:  %s\n  epserve: %s\n", name,
                        json_string_value(tmpl), json_string_value(want),
                        st ? ep_last_error() : out);
            }
        } else {
            errors++;
            if (!st || !strstr(ep_last_error(), needle)) {
                bad++;
                fprintf(stderr,
                        "NOT REFUSED AS EXPECTED %s\n  template: %.200s\n  want: %s\n  got: %s\n",
                        name, json_string_value(tmpl), needle, st ? ep_last_error() : out);
            }
        }
        free(out);
    }
    fprintf(stderr, "%zu constructs: %zu texts, %zu refusals, %zu wrong\n", n, texts, errors, bad);
    assert_true(texts >= 80 && errors >= 80);
    assert_int_equal(bad, 0);
    json_decref(all);
}

static void test_errors(void **state)
{
    (void)state;
    ep_status st;
    // Syntax errors are EP_ERR_FORMAT and constructs outside the subset
    // EP_ERR_UNSUPPORTED, both at parse time, with the template's name and line.
    assert_null(render("a\nb\n{% if x %}\n", NULL, &st));
    assert_int_equal(st, EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "t line 3:"));
    assert_null(render("\n\n{{ x|wordwrap }}", NULL, &st));
    assert_int_equal(st, EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "t line 3: filter 'wordwrap' is not supported"));
    ep_jinja *t;
    const char *src = "{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}";
    assert_int_equal(ep_jinja_parse(src, strlen(src), "t", &t), EP_OK); // only rendering fails
    json_t *v = json_loads("{\"messages\": [{\"content\": \"x\"}]}", 0, NULL);
    char *out = (char *)1;
    assert_int_equal(ep_jinja_render(t, v, &out, NULL), EP_ERR_ARG);
    assert_null(out);
    assert_non_null(strstr(ep_last_error(), "t line 2: can only concatenate str (not \"int\")"));
    json_decref(v);
    // The variables must be an object.
    v = json_loads("[1]", 0, NULL);
    assert_int_equal(ep_jinja_render(t, v, &out, NULL), EP_ERR_ARG);
    json_decref(v);
    ep_jinja_free(t);
    ep_jinja_free(NULL);
    // A template that is not UTF-8, or too big.
    assert_int_equal(ep_jinja_parse("a\xff", 2, "t", &t), EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "not valid UTF-8 (byte 1)"));
    size_t big = (size_t)EP_JINJA_MAX_SOURCE_BYTES + 1;
    char *s = malloc(big);
    memset(s, 'a', big);
    assert_int_equal(ep_jinja_parse(s, big, "t", &t), EP_ERR_UNSUPPORTED);
    free(s);
    // Output with NUL bytes keeps its length.
    src = "a{{ '\\x00' }}b";
    assert_int_equal(ep_jinja_parse(src, strlen(src), "t", &t), EP_OK);
    v = json_object();
    size_t len;
    assert_int_equal(ep_jinja_render(t, v, &out, &len), EP_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "a\0b", 3);
    free(out);
    json_decref(v);
    ep_jinja_free(t);
    // Names from vars shadow the globals.
    s = render("{{ range }}", "{\"range\": 5}", NULL);
    assert_string_equal(s, "5");
    free(s);
}

typedef struct {
    const ep_jinja *t;
    int id;
    int ok;
} worker;

static void *run(void *arg)
{
    worker *w = arg;
    for (int k = 0; k < 200; k++) {
        json_t *v = json_pack("{s:i}", "n", w->id * 1000 + k);
        char *out;
        char want[64];
        snprintf(want, sizeof want, "%d:%d", w->id * 1000 + k, 3);
        if (!ep_jinja_render(w->t, v, &out, NULL)) {
            w->ok += !strcmp(out, want);
            free(out);
        }
        json_decref(v);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    // One parsed template rendered by several threads at once.
    const char *src =
        "{% set ns = namespace(k=0) %}{% for i in range(3) %}{% set ns.k = ns.k + 1 %}"
        "{% endfor %}{{ n }}:{{ ns.k }}";
    ep_jinja *t;
    assert_int_equal(ep_jinja_parse(src, strlen(src), "t", &t), EP_OK);
    worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){t, i, 0};
        pthread_create(&th[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].ok, 200);
    }
    ep_jinja_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constructs),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
