/* Status codes and the thread-local error message (see status.h). */
#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[2048];

const char *td_status_to_string(td_status s) {
    switch (s) {
    case TD_OK:
        return "ok";
    case TD_ERR_INVALID:
        return "invalid input";
    case TD_ERR_IO:
        return "I/O error";
    case TD_ERR_NOMEM:
        return "out of memory";
    case TD_ERR_FORMAT:
        return "bad file format";
    case TD_ERR_NOTFOUND:
        return "not found";
    case TD_ERR_RUNTIME:
        return "runtime error";
    }
    return "unknown status";
}

int td_status_exit_code(td_status s) {
    switch (s) {
    case TD_OK:
        return 0;
    case TD_ERR_INVALID:
    case TD_ERR_FORMAT:
    case TD_ERR_NOTFOUND:
        return 2;
    default:
        return 1;
    }
}

td_status td_error_set(td_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return s;
}

td_status td_error_wrap(td_status s, const char *fmt, ...) {
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t pl = strlen(prefix), ol = strlen(g_msg);
    if (pl + ol + 1 > sizeof g_msg) ol = sizeof g_msg - pl - 1;
    memmove(g_msg + pl, g_msg, ol);
    memcpy(g_msg, prefix, pl);
    g_msg[pl + ol] = '\0';
    return s;
}

const char *td_error_message(void) {
    return g_msg;
}

void td_error_clear(void) {
    g_msg[0] = '\0';
}
