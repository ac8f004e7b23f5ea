// Chat templates: the text a list of messages becomes before tokenisation,
// as the model families' own Jinja templates render it with
// add_generation_prompt (Qwen3 ChatML without a thinking block; DeepSeek-V2's
// "User: / Assistant:" form). No Jinja engine: two fixed renderers.
#include "model/tokenizer.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s)
{
    size_t l = strlen(s);
    if (b->n + l + 1 > b->cap) {
        b->cap = EP_MAX(2 * b->cap, b->n + l + 1 + 256);
        b->s = ep_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, l + 1);
    b->n += l;
}

ep_status ep_chat_render(ep_arch arch, const ep_chat_msg *msgs, int n, char **out)
{
    *out = NULL;
    if (n <= 0)
        return ep_errorf(EP_ERR_ARG, "chat: messages: expected at least one message, found %d", n);
    for (int i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            return ep_errorf(EP_ERR_ARG,
                             "chat: messages[%d].role: expected \"system\", \"user\" or "
                             "\"assistant\", found %s%.40s%s",
                             i, r ? "\"" : "", r ? r : "nothing", r ? "\"" : "");
        if (!msgs[i].content)
            return ep_errorf(EP_ERR_ARG,
                             "chat: messages[%d].content: expected a string, found "
                             "nothing",
                             i);
    }
    sbuf b = {0};
    put(&b, "");
    if (arch == EP_ARCH_QWEN3_MOE) {
        for (int i = 0; i < n; i++) {
            put(&b, "<|im_start|>");
            put(&b, msgs[i].role);
            put(&b, "\n");
            put(&b, msgs[i].content);
            put(&b, "<|im_end|>\n");
        }
        put(&b, "<|im_start|>assistant\n");
    } else {
        static const char bos[] = "<\xef\xbd\x9c"
                                  "begin\xe2\x96\x81of\xe2\x96\x81sentence"
                                  "\xef\xbd\x9c>";
        static const char eos[] = "<\xef\xbd\x9c"
                                  "end\xe2\x96\x81of\xe2\x96\x81sentence"
                                  "\xef\xbd\x9c>";
        put(&b, bos);
        for (int i = 0; i < n; i++) {
            const char *r = msgs[i].role;
            if (!strcmp(r, "user")) {
                put(&b, "User: ");
                put(&b, msgs[i].content);
                put(&b, "\n\n");
            } else if (!strcmp(r, "assistant")) {
                put(&b, "Assistant: ");
                put(&b, msgs[i].content);
                put(&b, eos);
            } else { // system: as the template does, the text then a blank line
                put(&b, msgs[i].content);
                put(&b, "\n\n");
            }
        }
        put(&b, "Assistant:");
    }
    *out = b.s;
    return EP_OK;
}
