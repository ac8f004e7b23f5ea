// Chat templates: the text a conversation becomes before tokenisation. A
// checkpoint's own Jinja template (tokenizer_config.json `chat_template`, or
// chat_template.jinja beside it) rendered by model/jinja.h as transformers'
// apply_chat_template renders it; a built-in template per family only for
// checkpoints without one and for the synthetic presets. Immutable once
// loaded: one template serves every thread.
#ifndef EP_CHAT_H
#define EP_CHAT_H

#include "common/ep.h"
#include "common/model_cfg.h"

#include <jansson.h>

typedef struct ep_chat_template ep_chat_template;

// A tokenizer_config.json: its `chat_template` (a string, or a list of
// {"name", "template"} from which "default" is taken, as transformers does)
// and its special tokens (bos_token, eos_token, unk_token, sep_token,
// pad_token, cls_token, mask_token as strings or {"content": ...} objects,
// additional_special_tokens), which the template sees as variables. Errors
// name the file and key: EP_ERR_IO, EP_ERR_FORMAT (not JSON), EP_ERR_CONFIG
// (no chat_template, no "default" among named ones, a key of the wrong
// type), and the template's own parse errors with their line.
ep_status ep_chat_template_load(const char *path, ep_chat_template **out);
// The same with the template text given (a chat_template.jinja file's);
// config_path NULL: no special tokens. `name` stands for the template in
// messages.
ep_status ep_chat_template_from_source(const char *src, size_t len, const char *name,
                                       const char *config_path, ep_chat_template **out);
// The family's built-in template (docs/model.md): Qwen3 ChatML without
// thinking or tools; DeepSeek-V2-Chat's "User: / Assistant:" form with its
// BOS and EOS. Both refuse tools and roles other than system/user/assistant.
ep_status ep_chat_template_builtin(ep_arch arch, ep_chat_template **out);
// The template of a model: <checkpoint>/chat_template.jinja, else
// <checkpoint>/tokenizer_config.json's chat_template, else the built-in one
// (also for models without a checkpoint directory).
ep_status ep_chat_template_for_model(const ep_model_cfg *cfg, ep_chat_template **out);
void ep_chat_template_free(ep_chat_template *t); // NULL ok

// Where the template came from: "<path> 'chat_template'", "built-in Qwen3 ChatML", ...
const char *ep_chat_template_origin(const ep_chat_template *t);
bool ep_chat_template_is_builtin(const ep_chat_template *t);

// Renders with the variables transformers gives a template: the special
// tokens, then `kwargs` (a JSON object or NULL, e.g. {"enable_thinking":
// false}; it may override a special token), then messages (a JSON array of
// message objects, passed as they are), tools (a JSON array, or NULL for
// None), documents (None) and add_generation_prompt. A kwargs key naming one
// of those four is EP_ERR_ARG. Rendering errors (EP_ERR_ARG, or
// EP_ERR_UNSUPPORTED for a construct outside the subset) name the template
// and line. *out malloc'ed, NUL-terminated; encode it with allow_special.
ep_status ep_chat_template_render(const ep_chat_template *t, const json_t *messages,
                                  const json_t *tools, bool add_generation_prompt,
                                  const json_t *kwargs, char **out);

#endif
