// `epserve`: one binary, one subcommand per job (see `epserve --help`).
// Only dispatch lives here; each subcommand is its own file in app/.
#include "app/commands.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} ep_commands[] = {
    {"serve", ep_cmd_serve, "OpenAI-compatible HTTP server over all ranks (continuous batching)"},
    {"generate", ep_cmd_generate,
     "generate text for one prompt on all ranks; prints tokens and text"},
    {"tokenize", ep_cmd_tokenize, "text to token ids (or ids to text) with a tokenizer.json"},
    {"chat-template", ep_cmd_chat_template,
     "render messages with a model's chat template (its tokenizer_config.json)"},
    {"logits", ep_cmd_logits, "logits of one token sequence, for checks against other references"},
    {"bench", ep_cmd_bench, "run MoE layers under routing policies; throughput and bytes saved"},
    {"calibrate", ep_cmd_calibrate,
     "run the model on calibration sequences, write a routing profile"},
    {"make-model", ep_cmd_make_model, "write a synthetic checkpoint in the Hugging Face layout"},
    {"detect-eval", ep_cmd_detect_eval,
     "accuracy of the automatic Pick domain on synthetic or real routing data"},
    {"route", ep_cmd_route, "route gate logits offline with a policy, write JSON lines"},
    {"simulate", ep_cmd_simulate, "project throughput and bytes of a model on a cluster preset"},
    {"plan", ep_cmd_plan, "memory per GPU of a model on cluster presets; the smallest that fits"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: epserve <command> [options]   (run under mpirun for several ranks)\n\n");
    for (size_t i = 0; i < sizeof ep_commands / sizeof ep_commands[0]; i++)
        fprintf(f, "  %-14s %s\n", ep_commands[i].name, ep_commands[i].help);
    fprintf(f, "\n`epserve <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof ep_commands / sizeof ep_commands[0]; i++)
        if (!strcmp(argv[1], ep_commands[i].name)) return ep_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "epserve: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
