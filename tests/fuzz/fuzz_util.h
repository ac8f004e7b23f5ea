// Helpers shared by the libFuzzer targets in tests/fuzz/. The parsers under
// test take file paths, so each input is written to a file in a private
// directory (tmpfs when there is one). Holds no parser logic of its own.
#ifndef EP_FUZZ_UTIL_H
#define EP_FUZZ_UTIL_H

#include "common/model_cfg.h"

#include <stddef.h>
#include <stdint.h>

// The private directory: $EP_FUZZ_TMP, else /dev/shm, else $TMPDIR or /tmp,
// created on first use and removed (with every file written) at exit.
const char *ep_fuzz_dir(void);
// Writes data[0, size) to <dir>/<name> and returns the path (static buffer,
// valid until the next call). Aborts when the write fails: that is a broken
// harness, not a finding.
const char *ep_fuzz_file(const char *name, const void *data, size_t size);
// Path of <dir>/<name> without writing it (static buffer, like ep_fuzz_file).
const char *ep_fuzz_path(const char *name);
// Loads a model preset from configs/models/ (aborts when it cannot: the
// harness needs it) and quiets logging below errors.
void ep_fuzz_load_preset(const char *name, ep_model_cfg *cfg);
// Counts an input the parser accepted. With EP_FUZZ_STATS=1 in the
// environment the count is printed at exit: a seed corpus whose inputs are
// all refused exercises only the error paths.
void ep_fuzz_accepted(void);
// A parser accepted input that breaks its own contract: print why and abort,
// so that libFuzzer records the input as a crash.
#define EP_FUZZ_CHECK(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) ep_fuzz_fail(__FILE__, __LINE__, #cond);                                      \
    } while (0)
void ep_fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

#endif
