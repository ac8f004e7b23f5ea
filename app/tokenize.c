// `epserve tokenize`: text -> ids and ids -> text with a model's tokenizer,
// like vLLM's /tokenize and /detokenize. --lines runs many requests in one
// process (the parity test feeds it hundreds). Tokenizer logic is model/'s.
#include "app/args.h"
#include "app/commands.h"
#include "common/json_util.h"
#include "common/model_cfg.h"
#include "common/utf8.h"
#include "model/tokenizer.h"
#include "model/tokenizer_impl.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: epserve tokenize (--tokenizer FILE | --model M)\n"
               "                        (--text TEXT | --ids 1,2,3 | --lines FILE) [--no-special]\n"
               "  --tokenizer FILE  a Hugging Face tokenizer.json (byte-level BPE)\n"
               "  --model M         a preset, model YAML or checkpoint directory: its tokenizer\n"
               "                    (<checkpoint>/tokenizer.json, or the synthetic one)\n"
               "  --text TEXT       prints the ids of TEXT as a JSON array\n"
               "  --ids 1,2,3       prints the text the ids decode to\n"
               "  --lines FILE      one JSON value per line (FILE '-' is stdin): a string is\n"
               "                    encoded (prints a JSON array of ids), an array of ids is\n"
               "                    decoded (prints a JSON string; bytes that are not UTF-8\n"
               "                    become U+FFFD)\n"
               "  --no-special      encode special tokens as plain text; drop them when decoding\n"
               "  --help            this text\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "epserve tokenize: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see epserve tokenize --help)\n");
    return 2;
}

static void print_ids(FILE *f, const int *ids, int n)
{
    fputc('[', f);
    for (int i = 0; i < n; i++)
        fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", f);
}

// JSON string of s[0..n): escapes what JSON requires; invalid UTF-8 bytes
// (ids that split a character) become U+FFFD.
static void print_json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        uint32_t cp;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            i++;
        } else if (c == '\n') {
            fputs("\\n", f), i++;
        } else if (c == '\t') {
            fputs("\\t", f), i++;
        } else if (c == '\r') {
            fputs("\\r", f), i++;
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c), i++;
        } else if (c < 0x80) {
            fputc(c, f), i++;
        } else {
            size_t l = ep_utf8_next((const unsigned char *)s + i, n - i, &cp);
            if (l) {
                fwrite(s + i, 1, l, f);
                i += l;
            } else {
                fputs("\\ufffd", f);
                i++;
            }
        }
    }
    fputs("\"\n", f);
}

static int do_lines(const ep_tokenizer *t, const char *path, bool special)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "epserve tokenize: --lines %s: cannot open: %s\n", path, strerror(errno));
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len == 0) continue;
        json_error_t jerr;
        json_t *v = json_loadb(line, (size_t)len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (json_is_string(v)) {
            int *ids, n;
            if (ep_tokenizer_encode(t, json_string_value(v), json_string_length(v), special, &ids,
                                    &n)) {
                fprintf(stderr, "epserve tokenize: %s line %ld: %s\n", path, lineno,
                        ep_last_error());
                rc = 1;
            } else {
                print_ids(stdout, ids, n);
                free(ids);
            }
        } else if (json_is_array(v)) {
            size_t n = json_array_size(v);
            int *ids = malloc((n ? n : 1) * sizeof *ids);
            if (!ids) {
                fprintf(stderr, "epserve tokenize: %s line %ld: out of memory\n", path, lineno);
                rc = 1;
            }
            for (size_t i = 0; rc == 0 && i < n; i++) {
                json_t *e = json_array_get(v, i);
                if (!json_is_integer(e) || json_integer_value(e) < INT_MIN ||
                    json_integer_value(e) > INT_MAX) {
                    fprintf(stderr,
                            "epserve tokenize: %s line %ld: item %zu: expected an integer id, "
                            "found %s\n",
                            path, lineno, i, ep_json_type_name(e));
                    rc = 1;
                } else {
                    ids[i] = (int)json_integer_value(e);
                }
            }
            char *text;
            size_t tl;
            if (rc == 0) {
                if (ep_tokenizer_decode(t, ids, (int)n, !special, &text, &tl)) {
                    fprintf(stderr, "epserve tokenize: %s line %ld: %s\n", path, lineno,
                            ep_last_error());
                    rc = 1;
                } else {
                    print_json_string(stdout, text, tl);
                    free(text);
                }
            }
            free(ids);
        } else {
            fprintf(stderr,
                    "epserve tokenize: %s line %ld: expected a JSON string (to encode) or an "
                    "array of ids (to decode), found %s\n",
                    path, lineno, v ? "another JSON value" : jerr.text);
            rc = 1;
        }
        json_decref(v);
    }
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

int ep_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'},
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 'x'},
        {"ids", required_argument, NULL, 'i'},
        {"lines", required_argument, NULL, 'l'},
        {"no-special", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *tok_file = NULL, *model = NULL, *text = NULL, *ids_arg = NULL, *lines = NULL;
    bool special = true;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            tok_file = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 'x':
            text = optarg;
            break;
        case 'i':
            ids_arg = optarg;
            break;
        case 'l':
            lines = optarg;
            break;
        case 'n':
            special = false;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("%s needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!tok_file == !model) return usage_error("give exactly one of --tokenizer / --model%s", "");
    if ((text != NULL) + (ids_arg != NULL) + (lines != NULL) != 1)
        return usage_error("give exactly one of --text / --ids / --lines%s", "");

    int *ids = NULL, n = 0;
    if (ids_arg) {
        if (ep_arg_ids("--ids", ids_arg, INT_MIN, &ids, &n)) {
            fprintf(stderr, "epserve tokenize: %s\n", ep_last_error());
            return 2;
        }
    }
    ep_tokenizer *t = NULL;
    ep_status st;
    if (tok_file) {
        st = ep_tokenizer_load(tok_file, &t);
    } else {
        ep_model_cfg cfg;
        st = ep_model_cfg_load(model, &cfg);
        if (!st) st = ep_tokenizer_for_model(&cfg, &t);
    }
    if (st) {
        fprintf(stderr, "epserve tokenize: %s\n", ep_last_error());
        free(ids);
        return 1;
    }
    int rc = 0;
    if (lines) {
        rc = do_lines(t, lines, special);
    } else if (text) {
        int *out;
        int m;
        if (ep_tokenizer_encode(t, text, strlen(text), special, &out, &m)) {
            fprintf(stderr, "epserve tokenize: --text: %s\n", ep_last_error());
            rc = 1;
        } else {
            print_ids(stdout, out, m);
            free(out);
        }
    } else {
        char *s;
        size_t l;
        if (ep_tokenizer_decode(t, ids, n, !special, &s, &l)) {
            fprintf(stderr, "epserve tokenize: --ids: %s\n", ep_last_error());
            rc = 1;
        } else {
            fwrite(s, 1, l, stdout);
            fputc('\n', stdout);
            free(s);
        }
    }
    free(ids);
    ep_tokenizer_free(t);
    if (fflush(stdout)) rc = 1;
    return rc;
}
