// `epserve generate`: one request through the serving engine on every rank
// (mpirun), printed on rank 0: ids, text, finish reason, usage, tokens/s and
// the mean experts per token. Only the command line and the printing live
// here; the work is scheduler/engine.c. Input errors exit 2 on every rank.
#include "app/args.h"
#include "app/commands.h"
#include "comm/comm.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "model/chat.h"
#include "model/gen_config.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// What backend cuda holds on rank 0's device after the run, by part (the
// parts of ep_model_dev_mem and ep_moe_dev_mem, bytes): the measured side of
// `epserve plan --backend cuda` (tests/e2e/plan_cuda.sh compares them).
static json_t *dev_bytes_json(const ep_model *m)
{
    ep_model_dev_mem a;
    ep_moe_dev_mem b;
    if (ep_model_dev_mem_get(m, &a) || ep_moe_device_bytes(ep_model_moe((ep_model *)m), &b))
        return json_null();
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "weights_bf16",
                     (json_int_t)a.weights_bf16, "weights_f32", (json_int_t)a.weights_f32, "kv",
                     (json_int_t)a.kv, "workspace", (json_int_t)a.workspace, "experts",
                     (json_int_t)b.experts, "expert_scratch", (json_int_t)b.expert_scratch,
                     "router", (json_int_t)b.router, "exchange", (json_int_t)b.exchange,
                     "transport", (json_int_t)b.transport, "total",
                     (json_int_t)(a.total + b.total));
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mpirun -np N epserve generate --model M (--prompt TEXT | --chat TEXT |\n"
               "                                     --tokens 1,2,3) [options]\n"
               "  --model M            model preset name, model YAML or checkpoint directory\n"
               "  --prompt TEXT        the prompt as text (special tokens recognised)\n"
               "  --chat TEXT          one user message in the model's chat template (the\n"
               "                       checkpoint's tokenizer_config.json, else built-in)\n"
               "  --chat-template-kwargs JSON  arguments of that template, e.g.\n"
               "                       '{\"enable_thinking\": false}' for Qwen3\n"
               "  --tokens 1,2,3       the prompt as token ids\n"
               "  --max-tokens N       most generated tokens (default 16)\n"
               "  --routing R          policy name or routing YAML / preset (default baseline)\n"
               "  --temperature T      0 = greedy (default 0)\n"
               "  --top-k K            0 = no limit (default)\n"
               "  --top-p P            in (0, 1] (default 1)\n"
               "                       (a checkpoint's generation_config.json replaces these\n"
               "                       four defaults and adds its eos_token_id to the stop ids;\n"
               "                       the options given here win)\n"
               "  --seed S             sampling seed (default 0)\n"
               "  --stop S             a stop string (repeatable)\n"
               "  --ignore-eos         generate past end-of-sequence tokens\n"
               "  --ranks-per-node N   ranks per logical node (default: from hostnames)\n"
               "  --backend B          cpu | cuda: where the MoE experts run (default cpu);\n"
               "                       cuda: BF16 experts on one GPU per rank, NCCL\n"
               "                       (builds with EP_CUDA=ON)\n" EP_ARG_CUDA_GRAPH_HELP
               "  --dtype D            auto | f32 | bf16: storage of the replicated weights\n"
               "                       (default auto: the checkpoint's when BF16, BF16 for\n"
               "                       FP8, else f32)\n"
               "  --expert-dtype D     cpu backend: auto | f32 | bf16 experts (default auto)\n"
               "  --wire DTYPE         f32 | bf16 | f16 | fp8 all-to-all payload (default f32;\n"
               "                       docs/wire-format.md)\n"
               "  --micro-batches N    1 | 2: overlap each MoE layer's all-to-all with the\n"
               "                       other half-batch's experts (default 1)\n"
               "  --dispatch MODE      hier | flat all-to-all (default hier with more than one\n"
               "                       node on the cpu backend, else flat; docs/cluster.md)\n"
               "  --step-timeout S     seconds before a step counts as failed (default 30)\n"
               "  --json               print one JSON object (backend cuda: with device_bytes,\n"
               "                       what rank 0's device holds after the run, by part)\n");
}

typedef struct {
    int *ids;
    int n, cap;
    char *text;
    size_t len, cap_text;
    char reason[32];
    int prompt_tokens, completion_tokens;
    bool done, error;
    char message[1024];
    bool has_domain; // ep_event.pick_domain was set
    char domain[64];
} gen_out;

static void on_event(void *user, const ep_event *ev)
{
    gen_out *g = user;
    if (ev->text && ev->text_len) {
        if (g->len + ev->text_len + 1 > g->cap_text) {
            g->cap_text = (g->len + ev->text_len + 1) * 2;
            g->text = ep_xrealloc(g->text, g->cap_text);
        }
        memcpy(g->text + g->len, ev->text, ev->text_len);
        g->len += ev->text_len;
        g->text[g->len] = 0;
    }
    if (ev->kind == EP_EV_TOKEN) {
        if (g->n == g->cap) {
            g->cap = g->cap ? 2 * g->cap : 64;
            g->ids = ep_xrealloc(g->ids, (size_t)g->cap * sizeof(int));
        }
        g->ids[g->n++] = ev->token;
        return;
    }
    g->done = true;
    g->prompt_tokens = ev->prompt_tokens;
    g->completion_tokens = ev->completion_tokens;
    if (ev->kind == EP_EV_ERROR) {
        g->error = true;
        snprintf(g->reason, sizeof g->reason, "error");
        snprintf(g->message, sizeof g->message, "%s", ev->message ? ev->message : "");
    } else {
        snprintf(g->reason, sizeof g->reason, "%s", ev->finish_reason);
    }
    g->has_domain = ev->pick_domain != NULL;
    if (ev->pick_domain) snprintf(g->domain, sizeof g->domain, "%s", ev->pick_domain);
}

// A JSON string of bytes that may not be UTF-8 (a byte-level token on its
// own): invalid bytes become U+FFFD so the output always parses.
static json_t *json_text(const char *s, size_t n)
{
    char *o = ep_xmalloc(3 * n + 1);
    size_t k = 0, i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80                   ? 1
                     : (c >= 0xC2 && c < 0xE0)  ? 2
                     : (c >= 0xE0 && c < 0xF0)  ? 3
                     : (c >= 0xF0 && c <= 0xF4) ? 4
                                                : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t j = 1; ok && j < len; j++)
            ok = ((unsigned char)s[i + j] & 0xC0) == 0x80;
        if (ok) {
            memcpy(o + k, s + i, len);
            k += len;
            i += len;
        } else {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    json_t *j = json_stringn(o, k);
    free(o);
    return j ? j : json_string("");
}

// --chat: one user message rendered with the model's chat template.
static ep_status chat_prompt(const ep_model_cfg *cfg, const char *chat, const char *kwargs,
                             char **out)
{
    json_t *kw = NULL;
    if (kwargs) {
        json_error_t je;
        kw = json_loads(kwargs, 0, &je);
        if (!json_is_object(kw)) {
            json_decref(kw);
            return ep_errorf(EP_ERR_ARG,
                             "--chat-template-kwargs: expected a JSON object, found %s (column "
                             "%d)",
                             kw ? "another JSON value" : je.text, je.column);
        }
    }
    ep_chat_template *t;
    ep_status st = ep_chat_template_for_model(cfg, &t);
    if (!st) {
        json_t *msgs = json_pack("[{s:s,s:s}]", "role", "user", "content", chat);
        st = msgs ? ep_chat_template_render(t, msgs, NULL, true, kw, out)
                  : ep_errorf(EP_ERR_ARG, "--chat: expected UTF-8 text");
        json_decref(msgs);
        ep_chat_template_free(t);
    }
    json_decref(kw);
    return st;
}

int ep_cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"prompt", required_argument, 0, 'p'},
        {"chat", required_argument, 0, 'c'},
        {"chat-template-kwargs", required_argument, 0, 'K'},
        {"tokens", required_argument, 0, 't'},
        {"max-tokens", required_argument, 0, 'n'},
        {"routing", required_argument, 0, 'r'},
        {"temperature", required_argument, 0, 'T'},
        {"top-k", required_argument, 0, 'k'},
        {"top-p", required_argument, 0, 'P'},
        {"seed", required_argument, 0, 's'},
        {"stop", required_argument, 0, 'S'},
        {"ignore-eos", no_argument, 0, 'e'},
        {"ranks-per-node", required_argument, 0, 'R'},
        {"step-timeout", required_argument, 0, 'w'},
        {"backend", required_argument, 0, 'b'},
        {"cuda-graph", required_argument, 0, EP_ARG_CUDA_GRAPH},
        {"expert-dtype", required_argument, 0, 'D'},
        {"dtype", required_argument, 0, 'Y'},
        {"wire", required_argument, 0, 'W'},
        {"micro-batches", required_argument, 0, 'U'},
        {"dispatch", required_argument, 0, 'A'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *prompt = NULL, *chat = NULL, *tokens = NULL, *routing = "baseline";
    const char *chat_kwargs = NULL;
    ep_moe_backend backend = EP_MOE_BACKEND_CPU;
    int cuda_graph = 0; // --cuda-graph
    ep_dtype expert_dtype = EP_DTYPE_AUTO, dense_dtype = EP_DTYPE_AUTO, wire = EP_DTYPE_F32;
    int max_tokens = 16, rpn = 0, micro_batches = 1, dispatch = EP_MOE_DISPATCH_AUTO;
    // Which sampling options were given: those win over generation_config.json.
    bool set_max_tokens = false, set_temp = false, set_top_k = false, set_top_p = false;
    float timeout = 30.0f;
    bool ignore_eos = false, as_json = false;
    ep_sample_params sp;
    ep_sample_params_default(&sp);
    const char **stops = ep_xcalloc((size_t)argc + 1, sizeof *stops);
    int n_stop = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "m:p:c:t:n:r:T:k:P:s:S:eR:w:b:jh", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'c':
            chat = optarg;
            break;
        case 'K':
            chat_kwargs = optarg;
            break;
        case 't':
            tokens = optarg;
            break;
        case 'n':
            ok = ep_arg_int(optarg, 1, 1 << 24, &max_tokens);
            set_max_tokens = true;
            break;
        case 'r':
            routing = optarg;
            break;
        case 'T':
            ok = ep_arg_float(optarg, &sp.temperature);
            set_temp = true;
            break;
        case 'k':
            ok = ep_arg_int(optarg, 0, INT_MAX, &sp.top_k);
            set_top_k = true;
            break;
        case 'P':
            ok = ep_arg_float(optarg, &sp.top_p);
            set_top_p = true;
            break;
        case 's': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            ok = *optarg && !*end && !errno && optarg[0] != '-';
            sp.seed = v;
            break;
        }
        case 'S':
            stops[n_stop++] = optarg;
            break;
        case 'e':
            ignore_eos = true;
            break;
        case 'R':
            ok = ep_arg_int(optarg, 1, 1 << 20, &rpn);
            break;
        case 'w':
            ok = ep_arg_float(optarg, &timeout) && timeout > 0;
            break;
        case 'b':
            ok = ep_moe_backend_parse(optarg, &backend) == EP_OK;
            break;
        case EP_ARG_CUDA_GRAPH:
            ok = ep_arg_cuda_graph(optarg, &cuda_graph);
            break;
        case 'D':
            ok = ep_weight_dtype_parse(optarg, &expert_dtype) == EP_OK;
            break;
        case 'Y':
            ok = ep_weight_dtype_parse(optarg, &dense_dtype) == EP_OK;
            break;
        case 'W':
            ok = ep_comm_wire_parse("--wire", optarg, &wire) == EP_OK;
            break;
        case 'U':
            ok = ep_arg_int(optarg, 1, 2, &micro_batches);
            break;
        case 'A': {
            ep_dispatch_mode dm;
            ok = ep_dispatch_mode_parse("--dispatch", optarg, &dm) == EP_OK;
            dispatch = (int)dm;
            break;
        }
        case 'j':
            as_json = true;
            break;
        case 'h':
            usage(stdout);
            free(stops);
            return 0;
        default:
            usage(stderr);
            free(stops);
            return 2;
        }
        if (!ok) {
            const char *name = "?";
            for (const struct option *o = opts; o->name; o++)
                if (o->val == c) name = o->name;
            fprintf(stderr, "epserve generate: --%s: invalid value '%s'\n", name, optarg);
            free(stops);
            return 2;
        }
    }
    if (optind < argc || !model || (!!prompt + !!chat + !!tokens) != 1) {
        if (optind < argc)
            fprintf(stderr, "epserve generate: unexpected argument '%s'\n", argv[optind]);
        else
            fprintf(stderr, "epserve generate: --model and exactly one of --prompt, --chat, "
                            "--tokens are required\n");
        usage(stderr);
        free(stops);
        return 2;
    }
    if (chat_kwargs && !chat) {
        fprintf(stderr, "epserve generate: --chat-template-kwargs goes with --chat\n");
        free(stops);
        return 2;
    }

    ep_cluster *cl = NULL;
    ep_status st = ep_cluster_init(&argc, &argv, rpn, &cl);
    if (st) {
        fprintf(stderr, "epserve generate: %s\n", ep_last_error());
        free(stops);
        return 1;
    }
    ep_log_set_rank(cl->rank);
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_tokenizer *tok = NULL;
    ep_engine *e = NULL;
    int *ids = NULL, n_ids = 0;
    gen_out g = {0};
    double t0 = 0, t1 = 0;
    ep_engine_metrics mm = {0};
    bool have_metrics = false;
    ep_gen_config gen = {.bos = -1, .pad = -1};

    // Every rank reads the inputs, so input errors are found alike everywhere.
    if ((st = ep_model_cfg_load(model, &cfg))) goto done;
    // Options given > generation_config.json > the built-in defaults.
    if ((st = ep_gen_config_load(&cfg, &gen))) goto done;
    if (cl->rank == 0) ep_gen_config_warn(&gen);
    {
        ep_sample_params d = sp;
        ep_gen_config_sample_defaults(&gen, &d);
        if (!set_temp) sp.temperature = d.temperature;
        if (!set_top_k) sp.top_k = d.top_k;
        if (!set_top_p) sp.top_p = d.top_p;
        sp.repetition_penalty = d.repetition_penalty; // no option of generate's
        if (!set_max_tokens && gen.has_max_new_tokens) max_tokens = gen.max_new_tokens;
    }
    if ((st = ep_tokenizer_for_model(&cfg, &tok))) {
        if (tokens && !n_stop) { // ids in, ids out: the text is optional
            if (cl->rank == 0)
                fprintf(stderr, "epserve generate: no tokenizer (%s); printing ids only\n",
                        ep_last_error());
            st = EP_OK;
            tok = NULL;
        } else {
            goto done;
        }
    }
    if (tokens) {
        if ((st = ep_arg_ids("--tokens", tokens, INT_MIN, &ids, &n_ids))) goto done;
        for (int i = 0; i < n_ids; i++)
            if (ids[i] < 0 || ids[i] >= cfg.vocab) {
                st = ep_errorf(EP_ERR_ARG,
                               "--tokens: id %d (entry %d) is not a token of %s, "
                               "expected 0..%d",
                               ids[i], i, cfg.name, cfg.vocab - 1);
                goto done;
            }
    } else {
        char *rendered = NULL;
        const char *text = prompt;
        if (chat) {
            if ((st = chat_prompt(&cfg, chat, chat_kwargs, &rendered))) goto done;
            text = rendered;
        }
        st = ep_tokenizer_encode(tok, text, strlen(text), true, &ids, &n_ids);
        free(rendered);
        if (st) goto done;
        if (n_ids == 0) {
            st = ep_errorf(EP_ERR_ARG, "--prompt: the text encodes to no tokens");
            goto done;
        }
    }

    ep_engine_opts eo;
    ep_engine_opts_default(&eo, &cfg, cl->world_size);
    const char *rt[1] = {routing};
    eo.routings = rt;
    eo.n_routings = 1;
    eo.exit_when_idle = true;
    eo.step_timeout_s = timeout;
    eo.model.moe.backend = backend;
    eo.model.cuda_graph = cuda_graph;
    eo.model.moe.expert_dtype = expert_dtype;
    eo.model.dtype = dense_dtype;
    eo.model.moe.wire = wire;
    eo.model.moe.micro_batches = micro_batches;
    eo.model.moe.dispatch = dispatch;
    // One sequence: each rank holds at most one, with KV room for a whole context.
    eo.model.max_seqs = 1;
    eo.model.kv_blocks =
        (eo.model.max_ctx + eo.model.kv_block_tokens - 1) / eo.model.kv_block_tokens;
    eo.max_num_seqs = cl->world_size;
    eo.max_waiting = 1;
    eo.eos_ids = gen.eos;
    eo.n_eos_ids = gen.n_eos;
    if ((int64_t)n_ids + max_tokens > eo.max_model_len) {
        st = ep_errorf(EP_ERR_ARG,
                       "the prompt of %d tokens + --max-tokens %d = %lld tokens is "
                       "longer than the context of %d tokens",
                       n_ids, max_tokens, (long long)n_ids + max_tokens, eo.max_model_len);
        goto done;
    }
    if ((st = ep_weights_open(&cfg, &w))) goto done;
    if ((st = ep_engine_create(&cfg, cl, w, tok, &eo, &e))) goto done;

    // Rank 0 submits; its verdict (sampling parameters, stop strings) is every rank's.
    int32_t sub[2] = {0, 0};
    if (cl->rank == 0) {
        ep_request q = {.prompt = ids,
                        .n_prompt = n_ids,
                        .sample = sp,
                        .max_tokens = max_tokens,
                        .stop = stops,
                        .n_stop = n_stop,
                        .ignore_eos = ignore_eos,
                        .routing = -1};
        st = ep_engine_submit(e, &q, on_event, &g, NULL);
        sub[0] = st;
    }
    ep_status bs = ep_cluster_bcast(cl, sub, sizeof sub, 0);
    if (!st && bs) st = bs;
    if (!st && sub[0]) st = ep_errorf((ep_status)sub[0], "rank 0 refused the request");
    if (st) goto done;
    t0 = ep_now_us();
    st = ep_engine_run(e);
    t1 = ep_now_us();
    if (st && cl->rank == 0) {
        // Another rank may be stuck inside a collective: end the whole job.
        fprintf(stderr, "epserve generate: %s\n", ep_last_error());
        fflush(stderr);
        ep_cluster_abort(cl, 1);
    }
    if (!st && cl->rank == 0) have_metrics = ep_engine_metrics_get(e, &mm) == EP_OK;

done:;
    int code = st ? (st == EP_ERR_ARG ? 2 : 1) : 0;
    int rank0_code = code;
    ep_cluster_bcast(cl, &rank0_code, sizeof rank0_code, 0);
    if (st && (cl->rank == 0 || rank0_code == 0))
        fprintf(stderr, "epserve generate: %s\n", ep_last_error());
    int64_t worst = code;
    if (ep_cluster_allreduce_i64(cl, &worst, 1, EP_REDUCE_MAX) == EP_OK) code = (int)worst;
    if (code == 0 && cl->rank == 0) {
        if (g.error) code = 1;
        double secs = (t1 - t0) / 1e6;
        double tps = secs > 0 ? g.completion_tokens / secs : 0;
        double avg_k = have_metrics && mm.moe_token_layers > 0
                           ? (double)mm.moe_pairs / (double)mm.moe_token_layers
                           : 0;
        if (as_json) {
            json_t *o = json_object(), *a = json_array();
            for (int i = 0; i < g.n; i++)
                json_array_append_new(a, json_integer(g.ids[i]));
            json_object_set_new(o, "model", json_string(cfg.name));
            json_object_set_new(o, "routing", json_string(routing));
            json_object_set_new(o, "world_size", json_integer(cl->world_size));
            json_object_set_new(o, "ids", a);
            json_object_set_new(o, "text",
                                tok ? json_text(g.text ? g.text : "", g.len) : json_null());
            json_object_set_new(o, "finish_reason", json_string(g.reason));
            if (g.error) json_object_set_new(o, "error", json_string(g.message));
            json_object_set_new(o, "prompt_tokens", json_integer(g.prompt_tokens));
            json_object_set_new(o, "completion_tokens", json_integer(g.completion_tokens));
            json_object_set_new(o, "tokens_per_s", json_real(tps));
            json_object_set_new(o, "avg_k", json_real(avg_k));
            json_object_set_new(o, "k_base", json_integer(cfg.k_base));
            json_object_set_new(o, "sampling",
                                json_pack("{s:f, s:i, s:f, s:I, s:i}", "temperature",
                                          ep_json_float(sp.temperature), "top_k", sp.top_k, "top_p",
                                          ep_json_float(sp.top_p), "seed", (json_int_t)sp.seed,
                                          "max_tokens", max_tokens));
            json_object_set_new(o, "generation_config",
                                gen.present ? json_string(gen.path) : json_null());
            if (g.has_domain) // the automatic Pick domain (pick.domain auto), null: none clear
                json_object_set_new(o, "pick_domain",
                                    g.domain[0] ? json_string(g.domain) : json_null());
            if (backend == EP_MOE_BACKEND_CUDA) // measured; `epserve plan --backend cuda` plans it
                json_object_set_new(o, "device_bytes", dev_bytes_json(ep_engine_model(e)));
            char *s = json_dumps(o, JSON_COMPACT);
            printf("%s\n", s ? s : "{}");
            free(s);
            json_decref(o);
        } else {
            printf("ids:");
            for (int i = 0; i < g.n; i++)
                printf(" %d", g.ids[i]);
            printf("\n");
            if (tok) printf("text: %.*s\n", (int)g.len, g.text ? g.text : "");
            printf("finish_reason: %s  prompt_tokens: %d  completion_tokens: %d\n", g.reason,
                   g.prompt_tokens, g.completion_tokens);
            printf("tokens/s: %.1f  avg K: %.3f (k_base %d, routing %s, %d rank%s)\n", tps, avg_k,
                   cfg.k_base, routing, cl->world_size, cl->world_size > 1 ? "s" : "");
            if (g.has_domain) printf("pick domain (auto): %s\n", g.domain[0] ? g.domain : "none");
            if (g.error) fprintf(stderr, "epserve generate: %s\n", g.message);
        }
        fflush(stdout);
    }
    if (have_metrics) ep_engine_metrics_free(&mm);
    ep_engine_free(e);
    ep_tokenizer_free(tok);
    ep_weights_free(w);
    ep_cluster_free(cl);
    free(ids);
    free(g.ids);
    free(g.text);
    free(stops);
    return code;
}
