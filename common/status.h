/* Status codes shared by every module, and the one place a user-facing error message is
 * kept. A fallible function returns td_status (TD_OK = 0, negative = error) and, where it
 * first sees a failure, records a message with td_error_set(); callers up the stack return
 * the status unchanged, and main prints td_error_message() and exits with
 * td_status_exit_code(). */
#ifndef TD_STATUS_H
#define TD_STATUS_H

#ifdef __cplusplus /* the CUDA sources are C++ */
extern "C" {
#endif

typedef enum {
    TD_OK = 0,
    TD_ERR_INVALID = -1,  /* bad input: usage, config, file contents (exit code 2) */
    TD_ERR_IO = -2,       /* a file or directory could not be read or written (exit 1) */
    TD_ERR_NOMEM = -3,    /* an allocation failed (exit 1) */
    TD_ERR_FORMAT = -4,   /* a file is not in the format it claims (exit 2) */
    TD_ERR_NOTFOUND = -5, /* something named does not exist (exit 2) */
    TD_ERR_RUNTIME = -6,  /* anything else that went wrong while running (exit 1) */
} td_status;

const char *td_status_to_string(td_status s);

/* Maps a status to the process exit code: 0 ok, 2 bad usage or input, 1 otherwise. */
int td_status_exit_code(td_status s);

/* Records the message for the current failure (printf-style) and returns `s`, so a caller
 * can write `return td_error_set(TD_ERR_IO, "cannot open %s: %s", path, strerror(errno));`.
 * The message is thread-local; a later call replaces it. */
td_status td_error_set(td_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends context ("loading checkpoint runs/x: ") to the recorded message; returns `s`. */
td_status td_error_wrap(td_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The recorded message, or "" when none. Owned by the library. */
const char *td_error_message(void);
void td_error_clear(void);

#define TD_TRY(expr)                                                                               \
    do {                                                                                           \
        td_status td_try_s_ = (expr);                                                              \
        if (td_try_s_ != TD_OK) return td_try_s_;                                                  \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
