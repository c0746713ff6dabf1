/* TTY progress line (see progress.h). */
#include "common/progress.h"

#include <unistd.h>

static int g_drawn;

int td_progress_is_tty(void) {
    return isatty(2);
}

void td_progress_line(const char *text) {
    if (!td_progress_is_tty()) return;
    fprintf(stderr, "\r\033[K%s", text);
    fflush(stderr);
    g_drawn = 1;
}

void td_progress_done(void) {
    if (g_drawn) fputc('\n', stderr);
    g_drawn = 0;
}

void td_progress_fmt_eta(double s, char *buf, size_t n) {
    if (s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else if (t >= 60)
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, n, "%lds", t);
}
