// Temporary files and preset loading for the libFuzzer targets. Every target
// writes its inputs to a small fixed set of names, so cleanup at exit only
// needs to remember those names. Not used by the unit or MPI tests.
#include "fuzz_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EP_FUZZ_MAX_NAMES 16

static char g_dir[512];
static char g_path[1024];
static char g_names[EP_FUZZ_MAX_NAMES][64];
static int g_n_names;
static long g_accepted;

void ep_fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "fuzz: %s:%d: contract broken: %s (last error: %s)\n", file, line, what,
            ep_last_error());
    abort();
}

static void cleanup(void)
{
    for (int i = 0; i < g_n_names; i++) {
        snprintf(g_path, sizeof g_path, "%s/%s", g_dir, g_names[i]);
        unlink(g_path);
    }
    if (g_dir[0]) rmdir(g_dir);
}

static void print_stats(void)
{
    fprintf(stderr, "fuzz: %ld input(s) accepted by the parser\n", g_accepted);
}

void ep_fuzz_accepted(void)
{
    static bool registered;
    if (!registered && getenv("EP_FUZZ_STATS")) atexit(print_stats);
    registered = true;
    g_accepted++;
}

const char *ep_fuzz_dir(void)
{
    if (g_dir[0]) return g_dir;
    const char *base = getenv("EP_FUZZ_TMP");
    struct stat sb;
    if (!base || !*base) {
        if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0)
            base = "/dev/shm";
        else if (!(base = getenv("TMPDIR")) || !*base)
            base = "/tmp";
    }
    snprintf(g_dir, sizeof g_dir, "%s/epfuzz.XXXXXX", base);
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "fuzz: mkdtemp %s: %s\n", g_dir, strerror(errno));
        abort();
    }
    atexit(cleanup);
    return g_dir;
}

const char *ep_fuzz_path(const char *name)
{
    const char *dir = ep_fuzz_dir();
    int known = 0;
    for (int i = 0; i < g_n_names; i++)
        known |= !strcmp(g_names[i], name);
    if (!known) {
        if (g_n_names == EP_FUZZ_MAX_NAMES || strlen(name) >= sizeof g_names[0]) {
            fprintf(stderr, "fuzz: too many or too long temporary names (%s)\n", name);
            abort();
        }
        snprintf(g_names[g_n_names++], sizeof g_names[0], "%s", name);
    }
    snprintf(g_path, sizeof g_path, "%s/%s", dir, name);
    return g_path;
}

const char *ep_fuzz_file(const char *name, const void *data, size_t size)
{
    const char *path = ep_fuzz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: writing %s: %s\n", path, strerror(errno));
        abort();
    }
    return path;
}

void ep_fuzz_load_preset(const char *name, ep_model_cfg *cfg)
{
    ep_log_set_level(EP_LOG_ERROR);
    if (ep_model_cfg_load(name, cfg) != EP_OK) {
        fprintf(stderr, "fuzz: cannot load preset %s: %s\n", name, ep_last_error());
        abort();
    }
}
