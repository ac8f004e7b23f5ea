// Placeholder until the command lands: says so and fails.
#include "app/commands.h"

#include <stdio.h>

int ep_cmd_bench_serve(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "epserve %s: not built yet\n", argv[0]);
    return 1;
}
