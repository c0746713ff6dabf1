/* Monotonic wall-clock time in seconds, and peak resident memory in bytes. */
#ifndef TD_TIMEUTIL_H
#define TD_TIMEUTIL_H
#include <stdint.h>
double td_time_now(void);
int64_t td_peak_rss_bytes(void);
int64_t td_rss_bytes(void);
#endif
