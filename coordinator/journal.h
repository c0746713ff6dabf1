/* The coordinator's journal: an append-only file of records, each written and fsync'd before
 * the coordinator acts on it, and replayed on start to rebuild the job table, so a
 * coordinator killed at any moment and started again loses no job (docs/formats.md,
 * "Coordinator journal").
 *
 * One record per line: the CRC-32 (zlib's) of the JSON text as 8 lowercase hex digits, a
 * space, the JSON object on one line, "\n". A crash can leave only the last record torn (cut
 * short, or without its newline): td_journal_open cuts it off, says so in the log, and the
 * coordinator goes on without the action it had not yet taken. A record that does not check
 * out anywhere before the last line means the file was damaged by something else: open
 * refuses it, naming the line, rather than drop the jobs recorded after it. */
#ifndef TD_JOURNAL_H
#define TD_JOURNAL_H

#include <cjson/cJSON.h>

#include "common/status.h"

typedef struct td_journal td_journal;

/* Called once per record, oldest first; line counts from 1. An error stops the replay and
 * open returns it. The record belongs to the journal (do not keep it). */
typedef td_status (*td_journal_replay_fn)(void *ctx, const cJSON *rec, long line);

/* Opens (creating if need be) the journal at path and replays its records through fn
 * (which may be NULL). Holds an exclusive lock on the file (flock): a second coordinator on
 * the same journal is refused with TD_ERR_INVALID. */
td_status td_journal_open(const char *path, td_journal_replay_fn fn, void *ctx, td_journal **out);

/* Appends one record and fsyncs it: when this returns TD_OK the record survives a crash. */
td_status td_journal_append(td_journal *j, const cJSON *rec);

/* Records in the file (replayed plus appended) and bytes cut off a torn tail at open. */
long td_journal_count(const td_journal *j);
long td_journal_torn_bytes(const td_journal *j);

/* Closes the file and releases the lock; sets *j to NULL; accepts NULL. */
void td_journal_free(td_journal **j);

#endif
