/* A one-line progress display for long work, drawn on stderr only when it is a terminal
 * (machine-readable output goes to files, never here). */
#ifndef TD_PROGRESS_H
#define TD_PROGRESS_H
#include <stdio.h>
int td_progress_is_tty(void);
/* Redraws the current line with `text` (carriage return, no newline) on a TTY. */
void td_progress_line(const char *text);
/* Ends the progress line (newline) if one is drawn. */
void td_progress_done(void);
/* Formats seconds as "1h02m", "3m05s" or "12s" into buf. */
void td_progress_fmt_eta(double seconds, char *buf, size_t n);
#endif
