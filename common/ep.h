// Basics every epserve module includes: status codes with a last-error
// message, EP_ASSERT for broken invariants, logging with the rank prefix,
// checked allocation. No MPI, CUDA or NCCL types here.
#ifndef EP_H
#define EP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// What can fail at run time because of input, environment or peers.
// Broken invariants are EP_ASSERT (abort), never a status.
typedef enum {
    EP_OK = 0,
    EP_ERR_IO,          // a file could not be opened, read, written, mapped
    EP_ERR_FORMAT,      // a file's content is malformed (safetensors, JSON, YAML syntax)
    EP_ERR_CONFIG,      // a config key is unknown, missing, of the wrong type or inconsistent
    EP_ERR_ARG,         // a bad command-line argument or API argument
    EP_ERR_NOMEM,       // an allocation failed
    EP_ERR_COMM,        // a transport call failed or a peer sent something inconsistent
    EP_ERR_UNSUPPORTED, // valid, but not supported by this build (dtype, backend)
    EP_ERR_BUSY,        // at capacity right now (a full queue); retrying later may work
    EP_ERR_UNAVAILABLE, // the engine is not serving (stopping, or a rank failed)
} ep_status;

const char *ep_status_str(ep_status st);

// Sets the calling thread's last error message (printf style) and returns st,
// so that a failure is reported in one line: `return ep_errorf(EP_ERR_CONFIG,
// "%s: key '%s': expected an integer, found '%s'", file, key, val);`.
// The message must name the file/key/tensor, what was expected and what was found.
ep_status ep_errorf(ep_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prepends "prefix: " to the current message (adds context on the way up).
ep_status ep_error_prefix(ep_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ep_last_error(void); // "" when none
void ep_clear_error(void);

// Logging. Lines start with "[epserve rN] " once ep_log_set_rank() was called.
typedef enum { EP_LOG_DEBUG, EP_LOG_INFO, EP_LOG_WARN, EP_LOG_ERROR } ep_log_level;
void ep_log_set_rank(int rank);
void ep_log_set_level(ep_log_level lvl);
void ep_log(ep_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define EP_INFO(...)  ep_log(EP_LOG_INFO, __VA_ARGS__)
#define EP_WARN(...)  ep_log(EP_LOG_WARN, __VA_ARGS__)
#define EP_ERROR(...) ep_log(EP_LOG_ERROR, __VA_ARGS__)
#define EP_DEBUG(...) ep_log(EP_LOG_DEBUG, __VA_ARGS__)

// Aborts with rank, file, line and the expression. Only for broken invariants.
void ep_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define EP_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x)) ep_assert_fail(#x, __FILE__, __LINE__);                                          \
    } while (0)

// Allocation that aborts on failure (for sizes the program itself chose;
// sizes read from files are checked first and use plain malloc + EP_ERR_NOMEM).
void *ep_xmalloc(size_t n);
void *ep_xcalloc(size_t n, size_t size);
void *ep_xrealloc(void *p, size_t n);
char *ep_xstrdup(const char *s);

#define EP_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define EP_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define EP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

// Monotonic wall clock in microseconds.
double ep_now_us(void);

#endif
