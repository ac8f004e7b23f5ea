// The OpenAI API shapes: request bodies of /v1/completions and
// /v1/chat/completions parsed into a request (a pure function of the bytes
// and the server's limits, with the HTTP status and the OpenAI error object
// of each refusal), and the response bodies and SSE chunks written back.
// No I/O, no engine calls here; server/http.c joins them to the engine.
#ifndef EP_OPENAI_H
#define EP_OPENAI_H

#include "model/chat.h"
#include "model/sample.h"
#include "model/tokenizer.h"
#include "server/sbuf.h"

#include <jansson.h>

typedef enum { EP_OAI_COMPLETIONS, EP_OAI_CHAT } ep_oai_kind;

// What the parser checks a request against.
typedef struct {
    const char *model_name;      // the one served model id (404 for another)
    int max_model_len;           // prompt + generated tokens
    int vocab;                   // token ids of a prompt array lie in [0, vocab)
    const char *const *routings; // names a request may give as `routing`
    int n_routings;
    // Sampling of a request that leaves a field out: NULL means OpenAI's
    // (temperature 1, top_p 1, top_k 0); the server passes the model's
    // generation_config.json defaults laid over those.
    const ep_sample_params *sample_defaults;
    int default_max_tokens; // generation_config max_new_tokens; 0: 16 (completions) / the
                            // rest of the context (chat)
} ep_oai_limits;

// An OpenAI error: HTTP status and the body {"error":{message,type,param,code}}.
typedef struct {
    int status;     // 400, 401, 404, 405, 413, 429, 500, 503
    char type[32];  // "invalid_request_error", ...
    char param[32]; // field name, "" for null
    char code[32];  // "model_not_found", ..., "" for null
    char message[512];
} ep_oai_error;

enum { EP_OAI_MAX_STOP = 16, EP_OAI_MAX_STOP_LEN = 256, EP_OAI_MAX_MESSAGES = 4096 };

typedef struct {
    ep_oai_kind kind;
    char *prompt_text; // completions with a string prompt (else NULL)
    int *prompt_ids;   // completions with an id array: [n_prompt_ids]
    int n_prompt_ids;
    // chat: the messages as the template sees them (role "developer" read as
    // "system", text parts joined, the keys a template may use kept: role,
    // content, name, tool_calls, tool_call_id, reasoning_content), the tools
    // (NULL: none), chat_template_kwargs (NULL: none); owned references.
    json_t *messages, *tools, *chat_kwargs;
    bool add_generation_prompt; // vLLM's extension (default true)
    int max_tokens;             // 0: absent (completions default 16, chat: up to max_model_len)
    ep_sample_params sample;
    char *stop[EP_OAI_MAX_STOP];
    int n_stop;
    bool stream, include_usage, ignore_eos;
    int routing;       // index into limits.routings, -1: the server default
    char *pick_domain; // NULL: the profile's own
} ep_oai_request;

// Parses a body. Returns 0 and fills *r, or the HTTP status with *err set
// (nothing to free in *r then). Checks everything that needs no tokenizer:
// JSON syntax, types naming the field, model (404), n == 1, ranges of the
// sampling fields, max_tokens <= max_model_len, prompt id range and length,
// routing names.
int ep_oai_parse(ep_oai_kind kind, const char *body, size_t len, const ep_oai_limits *lim,
                 ep_oai_request *r, ep_oai_error *err);
void ep_oai_request_free(ep_oai_request *r); // NULL-safe, zeroes

// The prompt's tokens: ids as given, the string encoded (special tokens
// recognised, as HF does), or the chat messages rendered with the model's
// chat template (its errors are 400s naming the template line). *ids
// malloc'ed. Then the length checks (prompt alone, prompt + max_tokens over
// max_model_len: 400 with both numbers); fills the default max_tokens.
// Returns 0 or the HTTP status with *err set.
int ep_oai_prompt(ep_oai_request *r, const ep_tokenizer *tok, const ep_chat_template *chat,
                  const ep_oai_limits *lim, int **ids, int *n, ep_oai_error *err);

// Sets *err (printf message) and returns status.
int ep_oai_errorf(ep_oai_error *err, int status, const char *type, const char *param,
                  const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
// Appends the error body {"error":{...}} (no newline).
void ep_oai_error_json(ep_sbuf *b, const ep_oai_error *err);

// ---- responses ---------------------------------------------------------------
typedef struct {
    ep_oai_kind kind;
    const char *id;    // "cmpl-..." / "chatcmpl-..."
    long long created; // unix seconds
    const char *model;
    // The automatic Pick domain detected for the request (ep_event.pick_domain):
    // has_pick_domain adds "epserve": {"pick_domain": name or null} to the
    // final response / chunk, an extension field beside OpenAI's.
    bool has_pick_domain;
    char pick_domain[64];
} ep_oai_resp_hdr;

// A whole non-streamed response (choices[0].text or .message, usage).
void ep_oai_response(ep_sbuf *b, const ep_oai_resp_hdr *h, const char *text, size_t len,
                     const char *finish_reason, int prompt_tokens, int completion_tokens);
// One SSE event "data: {chunk}\n\n". role: put delta.role "assistant" (chat's
// first chunk); finish_reason NULL for null.
void ep_oai_chunk(ep_sbuf *b, const ep_oai_resp_hdr *h, bool role, const char *text, size_t len,
                  const char *finish_reason);
// The usage chunk (choices []) of stream_options.include_usage.
void ep_oai_usage_chunk(ep_sbuf *b, const ep_oai_resp_hdr *h, int prompt_tokens,
                        int completion_tokens);
// "data: {"error":...}\n\n" for a failure after the stream started.
void ep_oai_error_chunk(ep_sbuf *b, const ep_oai_error *err);
// "data: [DONE]\n\n"
void ep_oai_done(ep_sbuf *b);

// Constant-time comparison of a presented key with the expected one: the time
// depends on the expected key's length only.
bool ep_oai_key_equal(const char *given, size_t given_len, const char *expected,
                      size_t expected_len);

#endif
