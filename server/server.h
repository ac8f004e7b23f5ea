// The HTTP front end of `epserve serve` on rank 0: libmicrohttpd with a
// thread per connection, so a handler may block until its request's engine
// events arrive (non-streamed), and a streamed body is a content reader that
// waits on the request's condition variable between SSE chunks. The engine
// thread only appends to per-request buffers under a mutex and signals.
#ifndef EP_SERVER_H
#define EP_SERVER_H

#include "model/chat.h"
#include "model/gen_config.h"
#include "scheduler/engine.h"

typedef struct {
    const char *host;       // bind address (default 127.0.0.1)
    int port;               // 0: an ephemeral port (ep_server_port says which)
    const char *api_key;    // NULL/"": no check; else Bearer on /v1/*
    const char *model_name; // the served model id
    size_t max_body_bytes;  // larger bodies: 413 (default 1 MiB)
    int max_connections;    // concurrent connections (default 512)
    int max_model_len;      // from the engine's options
    // The model's generation_config.json (NULL: none): its defaults fill the
    // sampling fields a request leaves out, and /v1/models reports them.
    // Borrowed for the call only.
    const ep_gen_config *gen;
} ep_server_opts;
void ep_server_opts_default(ep_server_opts *o);

typedef struct ep_server ep_server;
// Starts listening. e, cfg, tok (may be NULL: token-id prompts only) and
// chat (may be NULL: no /v1/chat/completions) are borrowed and must outlive
// the server.
ep_status ep_server_start(const ep_server_opts *o, ep_engine *e, const ep_model_cfg *cfg,
                          const ep_tokenizer *tok, const ep_chat_template *chat, ep_server **out);
int ep_server_port(const ep_server *s);
// Stops listening and waits for every connection thread; call after
// ep_engine_run returned (every request has had its final event). NULL ok.
void ep_server_stop(ep_server *s);

#endif
