/* Logging to stderr with a level and the MPI rank (set once by the process that knows it).
 * TD_LOG_* print "[rank N] LEVEL file:line: message" (file relative to the repository);
 * INFO lines, written for users, omit the location: "[rank N] INFO: message". Without a
 * rank, INFO is the bare message. td_log_set_level() filters. */
#ifndef TD_LOG_H
#define TD_LOG_H

typedef enum { TD_LOG_LVL_ERROR, TD_LOG_LVL_WARN, TD_LOG_LVL_INFO, TD_LOG_LVL_DEBUG } td_log_level;

void td_log_set_level(td_log_level lvl);
void td_log_set_rank(int rank);
int td_log_rank(void);
void td_log_write(td_log_level lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define TD_LOG_ERROR(...) td_log_write(TD_LOG_LVL_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define TD_LOG_WARN(...) td_log_write(TD_LOG_LVL_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define TD_LOG_INFO(...) td_log_write(TD_LOG_LVL_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define TD_LOG_DEBUG(...) td_log_write(TD_LOG_LVL_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

/* For invariants whose failure is a bug in tandem, never for bad input. */
#define TD_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) td_log_assert_fail(#cond, __FILE__, __LINE__);                                \
    } while (0)
_Noreturn void td_log_assert_fail(const char *expr, const char *file, int line);

#endif
