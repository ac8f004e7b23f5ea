// `epserve chat-template`: renders a conversation with a model's chat
// template (model/chat.h) and prints the text, as transformers'
// apply_chat_template(tokenize=False) gives it. --cases renders many in one
// process (the parity test feeds it a hundred). Template logic is model/'s.
#include "app/commands.h"
#include "common/model_cfg.h"
#include "model/chat.h"
#include "model/jinja.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: epserve chat-template (--config FILE | --template FILE | --model M)\n"
            "                             (--messages FILE [--tools FILE] [--kwargs JSON]\n"
            "                              [--no-generation-prompt] | --cases FILE)\n"
            "  --config FILE      a tokenizer_config.json: its chat_template and special tokens\n"
            "  --template FILE    a Jinja template file (chat_template.jinja); with --config, the\n"
            "                     special tokens come from that file\n"
            "  --model M          a preset, model YAML or checkpoint directory: the template the\n"
            "                     server would use (the checkpoint's, else the built-in one)\n"
            "  --messages FILE    a JSON array of messages ('-': stdin); prints the text\n"
            "  --tools FILE       a JSON array of tool definitions\n"
            "  --kwargs JSON      template arguments, e.g. '{\"enable_thinking\": false}'\n"
            "  --no-generation-prompt  add_generation_prompt false (default true)\n"
            "  --cases FILE       one JSON object a line: {\"messages\": [...], \"tools\": [...],\n"
            "                     \"add_generation_prompt\": bool, \"kwargs\": {...}} (all but\n"
            "                     messages optional); prints one line each, {\"text\": ...} or\n"
            "                     {\"error\": ...}\n"
            "  --help             this text\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "epserve chat-template: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see epserve chat-template --help)\n");
    return 2;
}

static json_t *load(const char *what, const char *path)
{
    json_error_t je;
    json_t *j = strcmp(path, "-") ? json_load_file(path, JSON_DECODE_ANY, &je)
                                  : json_loadf(stdin, JSON_DECODE_ANY, &je);
    if (!j)
        fprintf(stderr, "epserve chat-template: %s %s: line %d, column %d: %s\n", what, path,
                je.line, je.column, je.text);
    return j;
}

static int do_cases(const ep_chat_template *t, const char *path)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "epserve chat-template: --cases %s: cannot open: %s\n", path,
                strerror(errno));
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
        json_error_t je;
        json_t *c = json_loadb(line, (size_t)len, 0, &je);
        json_t *agp = json_object_get(c, "add_generation_prompt");
        if (!json_is_object(c) || !json_is_array(json_object_get(c, "messages")) ||
            (agp && !json_is_boolean(agp))) {
            fprintf(stderr,
                    "epserve chat-template: %s line %ld: expected an object with a 'messages' "
                    "array (and a boolean add_generation_prompt), found %s\n",
                    path, lineno, c ? "something else" : je.text);
            json_decref(c);
            rc = 1;
            break;
        }
        char *text = NULL;
        ep_status st = ep_chat_template_render(
            t, json_object_get(c, "messages"), json_object_get(c, "tools"),
            agp ? json_is_true(agp) : true, json_object_get(c, "kwargs"), &text);
        json_t *o =
            st ? json_pack("{s:s}", "error", ep_last_error()) : json_pack("{s:s}", "text", text);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (!s) {
            fprintf(stderr, "epserve chat-template: %s line %ld: the result is not UTF-8\n", path,
                    lineno);
            rc = 1;
        } else {
            puts(s);
        }
        free(s);
        json_decref(o);
        free(text);
        json_decref(c);
    }
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

int ep_cmd_chat_template(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"template", required_argument, NULL, 'T'},
        {"model", required_argument, NULL, 'm'},
        {"messages", required_argument, NULL, 'M'},
        {"tools", required_argument, NULL, 't'},
        {"kwargs", required_argument, NULL, 'k'},
        {"no-generation-prompt", no_argument, NULL, 'n'},
        {"cases", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *tmpl_file = NULL, *model = NULL, *messages = NULL, *tools = NULL,
               *kwargs = NULL, *cases = NULL;
    bool gen_prompt = true;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            config = optarg;
            break;
        case 'T':
            tmpl_file = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 'M':
            messages = optarg;
            break;
        case 't':
            tools = optarg;
            break;
        case 'k':
            kwargs = optarg;
            break;
        case 'n':
            gen_prompt = false;
            break;
        case 'C':
            cases = optarg;
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
    if (!!model + !!(config || tmpl_file) != 1)
        return usage_error("give --model, or --config and/or --template%s", "");
    if (!messages == !cases) return usage_error("give exactly one of --messages / --cases%s", "");
    if (cases && (tools || kwargs || !gen_prompt))
        return usage_error("--tools, --kwargs and --no-generation-prompt go with --messages; "
                           "--cases lines carry their own%s",
                           "");

    ep_chat_template *t = NULL;
    ep_status st;
    if (model) {
        ep_model_cfg cfg;
        st = ep_model_cfg_load(model, &cfg);
        if (!st) st = ep_chat_template_for_model(&cfg, &t);
    } else if (tmpl_file) {
        FILE *f = fopen(tmpl_file, "rb");
        if (!f) {
            fprintf(stderr, "epserve chat-template: --template %s: cannot open: %s\n", tmpl_file,
                    strerror(errno));
            return 1;
        }
        char *src = NULL;
        size_t n = 0, cap = 0, k;
        do {
            if (n + 65536 > cap) src = realloc(src, cap = 2 * cap + 65536);
            if (!src) {
                fclose(f);
                fprintf(stderr, "epserve chat-template: out of memory\n");
                return 1;
            }
            k = fread(src + n, 1, cap - n, f);
            n += k;
        } while (k && n < (size_t)EP_JINJA_MAX_SOURCE_BYTES + 1);
        fclose(f);
        st = ep_chat_template_from_source(src, n, tmpl_file, config, &t);
        free(src);
    } else {
        st = ep_chat_template_load(config, &t);
    }
    if (st) {
        fprintf(stderr, "epserve chat-template: %s\n", ep_last_error());
        return 1;
    }
    int rc = 0;
    if (cases) {
        rc = do_cases(t, cases);
    } else {
        json_t *m = load("--messages", messages), *tl = NULL, *kw = NULL;
        if (m && tools) tl = load("--tools", tools);
        if (m && kwargs && (!tools || tl)) {
            json_error_t je;
            kw = json_loads(kwargs, 0, &je);
            if (!kw)
                fprintf(stderr, "epserve chat-template: --kwargs: column %d: %s\n", je.column,
                        je.text);
        }
        if (!m || (tools && !tl) || (kwargs && !kw)) {
            rc = 1;
        } else {
            char *text;
            if ((st = ep_chat_template_render(t, m, tl, gen_prompt, kw, &text))) {
                fprintf(stderr, "epserve chat-template: %s\n", ep_last_error());
                rc = 1;
            } else {
                fputs(text, stdout);
                free(text);
            }
        }
        json_decref(m);
        json_decref(tl);
        json_decref(kw);
    }
    ep_chat_template_free(t);
    if (fflush(stdout)) rc = 1;
    return rc;
}
