/* Levelled, rank-prefixed logging to stderr (see log.h). */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static td_log_level g_level = TD_LOG_LVL_INFO;
static int g_rank = -1;

void td_log_set_level(td_log_level lvl) {
    g_level = lvl;
}
void td_log_set_rank(int rank) {
    g_rank = rank;
}
int td_log_rank(void) {
    return g_rank < 0 ? 0 : g_rank;
}

void td_log_write(td_log_level lvl, const char *file, int line, const char *fmt, ...) {
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (lvl > g_level) return;
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (g_rank >= 0 && lvl == TD_LOG_LVL_INFO) /* for the user: no source location */
        fprintf(stderr, "[rank %d] %s: %s\n", g_rank, names[lvl], buf);
    else if (g_rank >= 0)
        fprintf(stderr, "[rank %d] %s %s:%d: %s\n", g_rank, names[lvl], file, line, buf);
    else if (lvl <= TD_LOG_LVL_WARN || lvl == TD_LOG_LVL_DEBUG)
        fprintf(stderr, "%s %s:%d: %s\n", names[lvl], file, line, buf);
    else
        fprintf(stderr, "%s\n", buf);
}

_Noreturn void td_log_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "tandem: internal error (bug): assertion '%s' failed at %s:%d\n", expr, file,
            line);
    abort();
}
