// Chat templates (model/chat.h): which template a model uses, its special
// tokens, and the variables it is rendered with (those of transformers'
// apply_chat_template). The Jinja work is model/jinja*.c. The built-in
// templates below are Jinja too, so every path renders through the same
// interpreter.
#include "model/chat.h"
#include "model/jinja.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct ep_chat_template {
    ep_jinja *tmpl;
    json_t *tokens; // the special tokens map: {"bos_token": "...", ...}
    char origin[1200];
    bool builtin;
};

// Qwen3's ChatML without a thinking block or tools (what the tiny presets
// were trained on: nothing; it is the family's message framing).
static const char QWEN3_BUILTIN[] =
    "{%- if tools %}{{ raise_exception('tools need the model\\'s own chat template (this model "
    "has no tokenizer_config.json chat_template; the built-in ChatML template has no tool "
    "format)') }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- if message.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('messages[' "
    "~ loop.index0 ~ '].role: the built-in ChatML template renders system, user and assistant, "
    "found ' ~ message.role) }}{%- endif %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n";

// DeepSeek-V2-Chat's own template ("User: " / "Assistant: ", BOS first, EOS
// after each assistant turn). V2.5 and V3 checkpoints ship a template with
// <｜User｜>/<｜Assistant｜> tokens; the synthetic DeepSeek tokenizer has
// neither, so the fallback keeps V2-Chat's form.
static const char DEEPSEEK_V2_BUILTIN[] =
    "{%- if tools %}{{ raise_exception('tools need the model\\'s own chat template (this model "
    "has no tokenizer_config.json chat_template; the built-in DeepSeek-V2 template has no tool "
    "format)') }}{%- endif %}\n"
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{%- if message.role == 'user' %}{{- 'User: ' + message.content + '\\n\\n' }}\n"
    "{%- elif message.role == 'assistant' %}{{- 'Assistant: ' + message.content + eos_token }}\n"
    "{%- elif message.role == 'system' %}{{- message.content + '\\n\\n' }}\n"
    "{%- else %}{{ raise_exception('messages[' ~ loop.index0 ~ '].role: the built-in "
    "DeepSeek-V2 template renders system, user and assistant, found ' ~ message.role) }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}\n";

static const char *const TOKEN_KEYS[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                         "pad_token", "cls_token", "mask_token"};

// A special token as transformers reads it: a string, or an AddedToken
// object {"content": ...}; null or absent: not in the map.
static ep_status token_value(const char *path, const char *key, json_t *v, json_t **out)
{
    *out = NULL;
    if (!v || json_is_null(v)) return EP_OK;
    if (json_is_string(v)) {
        *out = json_incref(v);
        return EP_OK;
    }
    json_t *c = json_is_object(v) ? json_object_get(v, "content") : NULL;
    if (json_is_string(c)) {
        *out = json_incref(c);
        return EP_OK;
    }
    return ep_errorf(EP_ERR_CONFIG,
                     "%s: key '%s': expected a string or an object with a string 'content', "
                     "found %s",
                     path, key,
                     json_is_object(v) ? "an object without 'content'" : "another JSON value");
}

static ep_status read_tokens(const char *path, json_t *cfg, json_t **out)
{
    json_t *m = json_object();
    for (size_t i = 0; i < EP_ARRAY_LEN(TOKEN_KEYS); i++) {
        json_t *v;
        ep_status st = token_value(path, TOKEN_KEYS[i], json_object_get(cfg, TOKEN_KEYS[i]), &v);
        if (st) {
            json_decref(m);
            return st;
        }
        if (v) json_object_set_new(m, TOKEN_KEYS[i], v);
    }
    json_t *add = json_object_get(cfg, "additional_special_tokens");
    if (add && !json_is_null(add)) {
        if (!json_is_array(add)) {
            json_decref(m);
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: key 'additional_special_tokens': expected an array, found "
                             "another JSON value",
                             path);
        }
        json_t *l = json_array();
        for (size_t i = 0; i < json_array_size(add); i++) {
            char key[64];
            snprintf(key, sizeof key, "additional_special_tokens[%zu]", i);
            json_t *v;
            ep_status st = token_value(path, key, json_array_get(add, i), &v);
            if (st) {
                json_decref(l);
                json_decref(m);
                return st;
            }
            if (v) json_array_append_new(l, v);
        }
        if (json_array_size(l)) // transformers leaves an empty list out of the map
            json_object_set_new(m, "additional_special_tokens", l);
        else
            json_decref(l);
    }
    *out = m;
    return EP_OK;
}

static json_t *load_json(const char *path, ep_status *st)
{
    json_error_t je;
    json_t *cfg = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!cfg) {
        struct stat sb;
        *st = stat(path, &sb) ? ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno))
                              : ep_errorf(EP_ERR_FORMAT, "%s: line %d, column %d: %s", path,
                                          je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        *st = ep_errorf(EP_ERR_FORMAT, "%s: expected a JSON object at the top, found another value",
                        path);
        return NULL;
    }
    *st = EP_OK;
    return cfg;
}

static ep_status make(const char *src, size_t len, const char *name, json_t *tokens,
                      ep_chat_template **out)
{
    ep_chat_template *t = ep_xcalloc(1, sizeof *t);
    ep_status st = ep_jinja_parse(src, len, name, &t->tmpl);
    if (st) {
        json_decref(tokens);
        free(t);
        return st;
    }
    t->tokens = tokens;
    snprintf(t->origin, sizeof t->origin, "%s", name);
    *out = t;
    return EP_OK;
}

ep_status ep_chat_template_load(const char *path, ep_chat_template **out)
{
    *out = NULL;
    ep_status st;
    json_t *cfg = load_json(path, &st);
    if (!cfg) return st;
    json_t *ct = json_object_get(cfg, "chat_template");
    char name[1200];
    snprintf(name, sizeof name, "%s 'chat_template'", path);
    if (!ct || json_is_null(ct)) {
        json_decref(cfg);
        return ep_errorf(EP_ERR_CONFIG, "%s: expected a key 'chat_template', found none", path);
    }
    if (json_is_array(ct)) { // named templates: "default" is the one used without a name
        json_t *pick = NULL;
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *e = json_array_get(ct, i), *n = json_object_get(e, "name");
            if (!json_is_object(e) || !json_is_string(n) ||
                !json_is_string(json_object_get(e, "template"))) {
                json_decref(cfg);
                return ep_errorf(EP_ERR_CONFIG,
                                 "%s: key 'chat_template'[%zu]: expected an object with string "
                                 "'name' and 'template'",
                                 path, i);
            }
            if (!strcmp(json_string_value(n), "default")) {
                pick = json_object_get(e, "template");
                snprintf(name, sizeof name, "%s 'chat_template'[%zu] (\"default\")", path, i);
            }
        }
        if (!pick) {
            json_decref(cfg);
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: key 'chat_template': expected a template named \"default\" "
                             "among the %zu named ones, found none",
                             path, json_array_size(ct));
        }
        ct = pick;
    } else if (!json_is_string(ct)) {
        json_decref(cfg);
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'chat_template': expected a string or a list of named "
                         "templates, found another JSON value",
                         path);
    }
    json_t *tokens;
    if ((st = read_tokens(path, cfg, &tokens))) {
        json_decref(cfg);
        return st;
    }
    st = make(json_string_value(ct), json_string_length(ct), name, tokens, out);
    json_decref(cfg);
    return st;
}

ep_status ep_chat_template_from_source(const char *src, size_t len, const char *name,
                                       const char *config_path, ep_chat_template **out)
{
    *out = NULL;
    json_t *tokens = json_object();
    if (config_path) {
        ep_status st;
        json_t *cfg = load_json(config_path, &st);
        if (!cfg) {
            json_decref(tokens);
            return st;
        }
        json_decref(tokens);
        st = read_tokens(config_path, cfg, &tokens);
        json_decref(cfg);
        if (st) return st;
    }
    return make(src, len, name, tokens, out);
}

ep_status ep_chat_template_builtin(ep_arch arch, ep_chat_template **out)
{
    *out = NULL;
    json_t *tokens = json_object();
    const char *src, *name;
    if (arch == EP_ARCH_QWEN3_MOE) {
        src = QWEN3_BUILTIN;
        name = "built-in Qwen3 ChatML template";
        json_object_set_new(tokens, "eos_token", json_string("<|im_end|>"));
    } else {
        src = DEEPSEEK_V2_BUILTIN;
        name = "built-in DeepSeek-V2 template";
        json_object_set_new(tokens, "bos_token",
                            json_string("<\xef\xbd\x9c"
                                        "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
        json_object_set_new(tokens, "eos_token",
                            json_string("<\xef\xbd\x9c"
                                        "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"));
    }
    ep_status st = make(src, strlen(src), name, tokens, out);
    if (!st) (*out)->builtin = true;
    return st;
}

static ep_status read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = 2 * cap + 4096;
            if (cap > (size_t)EP_JINJA_MAX_SOURCE_BYTES + 8192) {
                free(buf);
                fclose(f);
                return ep_errorf(EP_ERR_UNSUPPORTED,
                                 "%s: larger than the %d bytes a template may have", path,
                                 EP_JINJA_MAX_SOURCE_BYTES);
            }
            buf = ep_xrealloc(buf, cap);
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return ep_errorf(EP_ERR_IO, "%s: read error", path);
    }
    *text = buf;
    *len = n;
    return EP_OK;
}

ep_status ep_chat_template_for_model(const ep_model_cfg *cfg, ep_chat_template **out)
{
    *out = NULL;
    if (cfg->checkpoint[0]) {
        char jinja[1200], config[1200];
        snprintf(jinja, sizeof jinja, "%s/chat_template.jinja", cfg->checkpoint);
        snprintf(config, sizeof config, "%s/tokenizer_config.json", cfg->checkpoint);
        struct stat sb;
        bool has_config = !stat(config, &sb);
        if (!stat(jinja, &sb)) { // transformers >= 4.50 saves the template here
            char *text = NULL;
            size_t len = 0;
            ep_status st = read_file(jinja, &text, &len);
            if (st) return st;
            st = ep_chat_template_from_source(text, len, jinja, has_config ? config : NULL, out);
            free(text);
            return st;
        }
        if (has_config) {
            ep_status st;
            json_t *j = load_json(config, &st);
            if (!j) return st;
            bool has = json_object_get(j, "chat_template") &&
                       !json_is_null(json_object_get(j, "chat_template"));
            json_decref(j);
            if (has) return ep_chat_template_load(config, out);
        }
    }
    return ep_chat_template_builtin(cfg->arch, out);
}

void ep_chat_template_free(ep_chat_template *t)
{
    if (!t) return;
    ep_jinja_free(t->tmpl);
    json_decref(t->tokens);
    free(t);
}

const char *ep_chat_template_origin(const ep_chat_template *t)
{
    return t->origin;
}

bool ep_chat_template_is_builtin(const ep_chat_template *t)
{
    return t->builtin;
}

ep_status ep_chat_template_render(const ep_chat_template *t, const json_t *messages,
                                  const json_t *tools, bool add_generation_prompt,
                                  const json_t *kwargs, char **out)
{
    *out = NULL;
    if (!json_is_array(messages))
        return ep_errorf(EP_ERR_ARG, "chat: messages: expected an array of messages");
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return ep_errorf(EP_ERR_ARG, "chat: tools: expected an array of tool definitions");
    if (kwargs && !json_is_null(kwargs) && !json_is_object(kwargs))
        return ep_errorf(EP_ERR_ARG, "chat: chat_template_kwargs: expected an object");
    static const char *const reserved[] = {"messages", "tools", "documents",
                                           "add_generation_prompt"};
    json_t *vars = json_copy(t->tokens);
    if (kwargs && json_is_object(kwargs)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)kwargs, k, v)
        {
            for (size_t i = 0; i < EP_ARRAY_LEN(reserved); i++)
                if (!strcmp(k, reserved[i])) {
                    json_decref(vars);
                    return ep_errorf(EP_ERR_ARG,
                                     "chat: chat_template_kwargs: '%s' is set by the request "
                                     "itself, not by a template argument",
                                     k);
                }
            json_object_set(vars, k, v);
        }
    }
    json_object_set(vars, "messages", (json_t *)messages);
    json_object_set_new(vars, "tools", tools ? json_incref((json_t *)tools) : json_null());
    json_object_set_new(vars, "documents", json_null());
    json_object_set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt));
    ep_status st = ep_jinja_render(t->tmpl, vars, out, NULL);
    json_decref(vars);
    return st;
}
