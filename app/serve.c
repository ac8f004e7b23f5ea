// `epserve serve`: every rank loads the model and builds the engine; rank 0
// also runs the OpenAI-compatible HTTP front end (server/). All ranks run
// the engine loop on their main thread until SIGINT/SIGTERM (rank 0 stops
// the engine, which stops every rank) or a failed step (a dead or stuck rank:
// the engine answers every request with an error and this exits non-zero).
#include "app/args.h"
#include "app/commands.h"
#include "comm/comm.h"
#include "common/weights.h"
#include "scheduler/engine.h"
#include "server/server.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: epserve serve --model M [options]   (under mpirun: every rank serves)\n"
               "  --model M                 model preset name, model YAML or checkpoint directory\n"
               "  --host H                  address to bind (default 127.0.0.1)\n"
               "  --port P                  TCP port (default 8000; 0: any free port, printed)\n"
               "  --api-key K               require 'Authorization: Bearer K' on /v1/* (or env\n"
               "                            EPSERVE_API_KEY)\n"
               "  --served-model-name NAME  model id of the API (default: the model's name)\n"
               "  --max-num-seqs N          running sequences over all ranks\n"
               "  --max-model-len L         prompt + generated tokens of one request\n"
               "  --max-num-batched-tokens T  tokens one rank runs in one step (default 512;\n"
               "                            also --max-tokens-per-step)\n"
               "  --max-num-slots S         predicted (token, expert) pairs per MoE layer one\n"
               "                            rank admits in one step (default 256 x k_base: the\n"
               "                            binding limit, so a smaller K admits more tokens)\n"
               "  --max-waiting W           queued requests before new ones get 429 (default 256)\n"
               "  --routing R[,R2,...]      routing profiles a request may name (policy names or\n"
               "                            routing YAML); the first is the default (baseline)\n"
               "  --step-timeout S          seconds a step may take on every rank (default 30)\n"
               "  --ranks-per-node N        logical nodes of N ranks (default: by host name)\n"
               "  --max-body-bytes B        largest request body (default 1048576)\n"
               "  --backend B               cpu | cuda: where the MoE experts run (default cpu;\n"
               "                            cuda: BF16 experts on one GPU per rank, NCCL)\n"
               "  --cuda-graph M            backend cuda: off (default) | buckets | capture\n"
               "                            (docs/cuda.md \"CUDA Graph buckets\")\n"
               "  --dtype D                 auto | f32 | bf16: storage of the replicated weights\n"
               "                            (default auto: the checkpoint's when BF16, BF16 for\n"
               "                            FP8, else f32)\n"
               "  --expert-dtype D          cpu backend: auto | f32 | bf16 experts (default auto)\n"
               "  --placement KIND          contiguous | round_robin | eplb (default contiguous);\n"
               "                            eplb starts contiguous and re-places from the loads\n"
               "                            served (--rebalance-interval, default 50 with eplb)\n"
               "  --expert-load F           eplb: start from the loads in F (SGLang's expert-\n"
               "                            distribution format, {\"logical_count\": [L][E]})\n"
               "  --save-expert-load F      at a normal stop, write the loads served to F (same\n"
               "                            format)\n"
               "  --redundant-experts N     eplb: extra expert slots per layer (default 0)\n"
               "  --rebalance-interval N    re-place the experts every N steps (0: never)\n"
               "  --rebalance-min-gain G    move weights only when the predicted max/mean rank\n"
               "                            load improves by G (relative; default 0.05)\n"
               "  --wire DTYPE              f32 | bf16 | f16 | fp8 all-to-all payload (default\n"
               "                            f32; docs/wire-format.md)\n"
               "  --micro-batches N         1 | 2: overlap each MoE layer's all-to-all with the\n"
               "                            other half-batch's experts (default 1)\n"
               "  --dispatch MODE           hier | flat all-to-all (default hier with more than\n"
               "                            one node on the cpu backend, else flat;\n"
               "                            docs/cluster.md)\n"
               "  --enable-prefix-caching   reuse cached KV blocks of a shared prompt prefix\n"
               "  --no-prefix-caching       (default: enabled; docs/scheduler.md)\n"
               "A checkpoint's generation_config.json supplies the sampling defaults and extra\n"
               "end-of-sequence ids (a request's own fields win; docs/serving.md).\n"
               "Launch with `mpirun --mca odls_base_sigkill_timeout 3 ...` so that when a rank\n"
               "dies, rank 0 has time to answer every request with an error naming it before\n"
               "mpirun kills the job (docs/serving.md).\n");
}

static ep_engine *volatile g_engine; // for the signal handler (rank 0)

static void on_signal(int sig)
{
    (void)sig;
    if (g_engine) ep_engine_shutdown(g_engine, false);
}

// Splits "a,b,c" in place into at most max names.
static int split_list(char *s, const char **names, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ","))
        if (*tok) names[n++] = tok;
    return n;
}

// Every rank learns whether any failed (worst exit code in *worst) and the
// failure is printed once: input errors are the same on every rank, so rank
// 0 reports them; another rank only what rank 0 did not see.
static int64_t agree(ep_cluster *cl, ep_status st, int64_t *worst)
{
    int code = st ? (st == EP_ERR_ARG ? 2 : 1) : 0;
    int rank0_code = code;
    ep_cluster_bcast(cl, &rank0_code, sizeof rank0_code, 0);
    if (st && (cl->rank == 0 || rank0_code == 0)) {
        // The front end's messages start with "serve: " for API callers; say it once.
        const char *msg = ep_last_error();
        if (!strncmp(msg, "serve: ", 7)) msg += 7;
        fprintf(stderr, "epserve serve: %s\n", msg);
    }
    int64_t w = code;
    if (ep_cluster_allreduce_i64(cl, &w, 1, EP_REDUCE_MAX)) w = 1;
    *worst = w;
    return w;
}

int ep_cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},
        {"api-key", required_argument, 0, 'k'},
        {"served-model-name", required_argument, 0, 'n'},
        {"max-num-seqs", required_argument, 0, 's'},
        {"max-model-len", required_argument, 0, 'l'},
        {"max-tokens-per-step", required_argument, 0, 't'},
        {"max-num-batched-tokens", required_argument, 0, 't'},
        {"max-num-slots", required_argument, 0, 'S'},
        {"max-waiting", required_argument, 0, 'w'},
        {"routing", required_argument, 0, 'r'},
        {"step-timeout", required_argument, 0, 'T'},
        {"ranks-per-node", required_argument, 0, 'N'},
        {"max-body-bytes", required_argument, 0, 'B'},
        {"backend", required_argument, 0, 'b'},
        {"cuda-graph", required_argument, 0, EP_ARG_CUDA_GRAPH},
        {"expert-dtype", required_argument, 0, 'D'},
        {"dtype", required_argument, 0, 'Y'},
        {"wire", required_argument, 0, 'W'},
        {"placement", required_argument, 0, 'L'},
        {"redundant-experts", required_argument, 0, 'X'},
        {"rebalance-interval", required_argument, 0, 'I'},
        {"rebalance-min-gain", required_argument, 0, 'G'},
        {"micro-batches", required_argument, 0, 'U'},
        {"expert-load", required_argument, 0, 'E'},
        {"save-expert-load", required_argument, 0, 'O'},
        {"dispatch", required_argument, 0, 'A'},
        {"enable-prefix-caching", no_argument, 0, 'P'},
        {"no-prefix-caching", no_argument, 0, 'Q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *served = NULL, *routing_arg = "baseline";
    const char *load_in = NULL, *load_out = NULL;
    ep_server_opts so;
    ep_server_opts_default(&so);
    so.api_key = getenv("EPSERVE_API_KEY");
    long max_num_seqs = 0, max_model_len = 0, max_tps = 0, max_waiting = -1, rpn = 0;
    long max_slots = 0, redundant = 0, rebalance = -1;
    int dispatch = EP_MOE_DISPATCH_AUTO;
    double min_gain = 0.05;
    ep_place_kind placement = EP_PLACE_CONTIGUOUS;
    long port = 8000, body = (long)so.max_body_bytes, micro_batches = 1;
    double step_timeout = 0;
    bool prefix_caching = true;
    ep_moe_backend backend = EP_MOE_BACKEND_CPU;
    int cuda_graph = 0; // --cuda-graph
    ep_dtype expert_dtype = EP_DTYPE_AUTO, dense_dtype = EP_DTYPE_AUTO, wire = EP_DTYPE_F32;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        long *dst = NULL, lo = 1, hi = 1L << 30;
        const char *name = NULL;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'E':
            load_in = optarg;
            break;
        case 'O':
            load_out = optarg;
            break;
        case 'H':
            so.host = optarg;
            break;
        case 'k':
            so.api_key = optarg;
            break;
        case 'n':
            served = optarg;
            break;
        case 'r':
            routing_arg = optarg;
            break;
        case 'p':
            dst = &port, name = "--port", lo = 0, hi = 65535;
            break;
        case 's':
            dst = &max_num_seqs, name = "--max-num-seqs";
            break;
        case 'l':
            dst = &max_model_len, name = "--max-model-len";
            break;
        case 't':
            dst = &max_tps, name = "--max-num-batched-tokens";
            break;
        case 'S':
            dst = &max_slots, name = "--max-num-slots";
            break;
        case 'w':
            dst = &max_waiting, name = "--max-waiting", lo = 0;
            break;
        case 'N':
            dst = &rpn, name = "--ranks-per-node";
            break;
        case 'U':
            dst = &micro_batches, name = "--micro-batches", hi = 2;
            break;
        case 'B':
            dst = &body, name = "--max-body-bytes", lo = 64;
            break;
        case 'b':
            if (ep_moe_backend_parse(optarg, &backend)) {
                fprintf(stderr, "epserve serve: --%s\n", ep_last_error());
                return 2;
            }
            break;
        case EP_ARG_CUDA_GRAPH:
            if (!ep_arg_cuda_graph(optarg, &cuda_graph)) {
                fprintf(stderr,
                        "epserve serve: --cuda-graph '%s', expected off, buckets or capture\n",
                        optarg);
                return 2;
            }
            break;
        case 'L':
            if (ep_place_kind_parse(optarg, &placement)) {
                fprintf(stderr, "epserve serve: --placement: %s\n", ep_last_error());
                return 2;
            }
            break;
        case 'X':
            dst = &redundant, name = "--redundant-experts", lo = 0;
            break;
        case 'I':
            dst = &rebalance, name = "--rebalance-interval", lo = 0;
            break;
        case 'G': {
            char *end = NULL;
            min_gain = strtod(optarg, &end);
            if (!end || *end || !(min_gain >= -1 && min_gain < 1)) {
                fprintf(stderr,
                        "epserve serve: --rebalance-min-gain: expected a number in [-1, 1), "
                        "found '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'W':
            if (ep_comm_wire_parse("--wire", optarg, &wire)) {
                fprintf(stderr, "epserve serve: %s\n", ep_last_error());
                return 2;
            }
            break;
        case 'A': {
            ep_dispatch_mode dm;
            if (ep_dispatch_mode_parse("--dispatch", optarg, &dm)) {
                fprintf(stderr, "epserve serve: %s\n", ep_last_error());
                return 2;
            }
            dispatch = (int)dm;
            break;
        }
        case 'D':
        case 'Y':
            if (ep_weight_dtype_parse(optarg, c == 'D' ? &expert_dtype : &dense_dtype)) {
                fprintf(stderr, "epserve serve: --%s: %s\n", c == 'D' ? "expert-dtype" : "dtype",
                        ep_last_error());
                return 2;
            }
            break;
        case 'T': {
            char *end;
            step_timeout = strtod(optarg, &end);
            if (*end || !(step_timeout > 0 && step_timeout <= 86400)) {
                fprintf(
                    stderr,
                    "epserve serve: --step-timeout: expected seconds in (0, 86400], found '%s'\n",
                    optarg);
                return 2;
            }
            break;
        }
        case 'P':
        case 'Q':
            prefix_caching = c == 'P';
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
        if (dst && !ep_arg_long(optarg, lo, hi, dst)) {
            fprintf(stderr, "epserve serve: %s: expected an integer in [%ld, %ld], found '%s'\n",
                    name, lo, hi, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve serve: unexpected argument '%s'\n", argv[optind]);
        serve_usage(stderr);
        return 2;
    }
    if (!model) {
        fprintf(stderr, "epserve serve: --model is required\n");
        serve_usage(stderr);
        return 2;
    }
    char *routing_buf = ep_xstrdup(routing_arg);
    const char *routings[64];
    const long rebalance_eff = rebalance >= 0 ? rebalance : placement == EP_PLACE_EPLB ? 50 : 0;
    if (load_in && placement != EP_PLACE_EPLB) {
        fprintf(stderr, "epserve serve: --expert-load places experts by EPLB: it needs "
                        "--placement eplb\n");
        return 2;
    }
    if (redundant > 0 && rebalance_eff == 0 && !load_in) {
        fprintf(stderr,
                "epserve serve: --redundant-experts %ld has no effect without "
                "re-placement or loads: use --placement eplb with --expert-load F or "
                "--rebalance-interval N > 0\n",
                redundant);
        return 2;
    }
    if (rebalance_eff > 0 && backend == EP_MOE_BACKEND_CUDA) {
        fprintf(stderr, "epserve serve: re-placement (--placement eplb, --rebalance-interval) "
                        "needs experts that can move between ranks; --backend cuda cannot yet\n");
        return 2;
    }
    int n_routings = split_list(routing_buf, routings, 64);
    if (n_routings == 0) {
        fprintf(stderr, "epserve serve: --routing: expected one or more names, found '%s'\n",
                routing_arg);
        free(routing_buf);
        return 2;
    }

    ep_cluster *cl = NULL;
    ep_status st = ep_cluster_init(&argc, &argv, (int)rpn, &cl);
    if (st) {
        fprintf(stderr, "epserve serve: %s\n", ep_last_error());
        free(routing_buf);
        return 1;
    }
    ep_log_set_rank(cl->rank);
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_tokenizer *tok = NULL;
    ep_engine *e = NULL;
    ep_server *srv = NULL;
    // Each stage ends with every rank agreeing whether to go on: the engine's
    // creation is collective, so no rank may skip it alone (rank 0 alone
    // loads the tokenizer and alone starts the HTTP front end).
    int64_t worst = 0;
    ep_gen_config gen = {.bos = -1, .pad = -1}; // generation_config.json, read on every rank
    ep_chat_template *chat = NULL;
    double *load = NULL; // --expert-load, read on every rank (like the model)
    if (!(st = ep_model_cfg_load(model, &cfg)) && !(st = ep_gen_config_load(&cfg, &gen)) &&
        !(st = ep_weights_open(&cfg, &w)) && cl->rank == 0 &&
        !(st = ep_tokenizer_for_model(&cfg, &tok)))
        st = ep_chat_template_for_model(&cfg, &chat);
    if (!st && cl->rank == 0) ep_gen_config_warn(&gen);
    if (!st && load_in) {
        bool *is_moe = ep_xcalloc((size_t)cfg.n_layers, sizeof(bool));
        for (int l = 0; l < cfg.n_layers; l++)
            is_moe[l] = ep_model_layer_is_moe(&cfg, l);
        st = ep_expert_load_read(load_in, cfg.n_layers, cfg.n_experts, is_moe, &load);
        free(is_moe);
        if (st) st = ep_error_prefix(st, "--expert-load");
    }
    if (!agree(cl, st, &worst)) {
        ep_engine_opts eo;
        ep_engine_opts_default(&eo, &cfg, cl->world_size);
        eo.model.progress = cl->rank == 0;
        if (max_num_seqs) eo.max_num_seqs = (int)max_num_seqs;
        if (max_model_len) {
            eo.max_model_len = (int)max_model_len;
            if (eo.model.max_ctx < eo.max_model_len) eo.model.max_ctx = eo.max_model_len;
        }
        if (max_tps) {
            eo.max_tokens_per_step = (int)max_tps;
            eo.model.moe.cap_tokens = (int)max_tps; // the buffers of a step
        }
        if (max_slots) eo.slot_budget = (int64_t)max_slots * ep_model_n_moe_layers(&cfg);
        if (max_waiting >= 0) eo.max_waiting = (int)max_waiting;
        if (step_timeout > 0) eo.step_timeout_s = step_timeout;
        eo.model.moe.backend = backend;
        eo.model.cuda_graph = cuda_graph;
        eo.model.moe.expert_dtype = expert_dtype;
        eo.model.dtype = dense_dtype;
        eo.model.moe.wire = wire;
        // eplb: start from the file's loads, else contiguous (no loads yet);
        // re-place from what is served.
        eo.model.moe.placement =
            placement == EP_PLACE_EPLB && !load ? EP_PLACE_CONTIGUOUS : placement;
        eo.model.moe.expert_load = load;
        eo.model.moe.redundant_experts = (int)redundant;
        eo.rebalance_interval = (int)rebalance_eff;
        eo.rebalance_min_gain = min_gain;
        eo.model.moe.micro_batches = (int)micro_batches;
        eo.model.moe.dispatch = dispatch;
        eo.model.prefix_caching = prefix_caching;
        eo.routings = routings;
        eo.n_routings = n_routings;
        eo.eos_ids = gen.eos;
        eo.n_eos_ids = gen.n_eos;
        st = ep_engine_create(&cfg, cl, w, tok, &eo, &e);
        free(load); // read by ep_moe_init
        load = NULL;
        if (!st && cl->rank == 0) {
            so.port = (int)port;
            so.max_body_bytes = (size_t)body;
            so.model_name = served ? served : cfg.name;
            so.max_model_len = eo.max_model_len;
            so.gen = &gen;
            st = ep_server_start(&so, e, &cfg, tok, chat, &srv);
        }
        agree(cl, st, &worst);
    }
    int code;
    if (worst == 0) {
        struct sigaction sa = {0};
        sa.sa_handler = cl->rank == 0 ? on_signal : SIG_IGN;
        sigemptyset(&sa.sa_mask);
        // Other ranks ignore the signals mpirun forwards: rank 0's shutdown
        // stops them. Rank 0 leaves SIGTERM to the engine, which tells a
        // user's stop from mpirun tearing the job down after a rank died (it
        // then answers every request with an error naming that rank).
        g_engine = cl->rank == 0 ? e : NULL;
        sigaction(SIGINT, &sa, NULL);
        if (cl->rank != 0) sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (cl->rank == 0) {
            printf("epserve serve: chat template: %s\n", ep_chat_template_origin(chat));
            printf("epserve serve: listening on http://%s:%d (model %s, %d rank%s)\n", so.host,
                   ep_server_port(srv), so.model_name, cl->world_size,
                   cl->world_size > 1 ? "s" : "");
            fflush(stdout);
        }
        st = ep_engine_run(e);
        g_engine = NULL;
        if (st) {
            // Said first: mpirun may kill this process while it lingers.
            fprintf(stderr, "epserve serve: rank %d: %s\n", cl->rank, ep_last_error());
            fflush(stdout);
            fflush(stderr);
            // Every request in flight has its error; the front end stays up a
            // little so that the answers are flushed and /health and new
            // requests get 503 (the engine no longer serves).
            if (cl->rank == 0) {
                struct timespec ts = {1, 500000000L};
                while (nanosleep(&ts, &ts) && errno == EINTR) {
                }
            }
            ep_server_stop(srv);
            // A dead peer can hang MPI's finalisation (ep_cluster_free): leave
            // now, non-zero.
            _exit(1);
        }
        ep_server_stop(srv); // every request has had its final event
        srv = NULL;
        code = 0;
        if (load_out && cl->rank == 0) {
            ep_engine_metrics em;
            if (!(st = ep_engine_metrics_get(e, &em))) {
                st = ep_expert_load_write(load_out, em.n_layers, em.n_experts, em.expert_load);
                ep_engine_metrics_free(&em);
            }
            if (st) {
                fprintf(stderr, "epserve serve: --save-expert-load: %s\n", ep_last_error());
                code = 1;
            }
        }
    } else {
        code = (int)worst;
    }
    ep_server_stop(srv);
    ep_engine_free(e);
    ep_tokenizer_free(tok);
    ep_chat_template_free(chat);
    ep_weights_free(w);
    ep_cluster_free(cl);
    free(routing_buf);
    free(load);
    return code;
}
