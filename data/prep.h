/* `tandem prep`: text → cleaned, deduplicated documents → BPE tokenizer → token shards.
 *
 * Stages (each rank of an MPI job takes the input files i with i % size == rank):
 *   1. list inputs (directories recursively, in name order); a file reached again through
 *      a link is skipped (counted); binary files (a NUL byte) are skipped (counted)
 *   2. read documents: plain text (one document per file, or split at a delimiter line),
 *      JSON Lines (a string field, default "text"), each optionally gzip-compressed
 *   3. clean (clean.h): fix escapes/overstrikes/controls, NFC, drop by quality rules
 *   4. deduplicate (dedup.h), globally and in input order, on rank 0
 *   5. tokenizer: train byte-level BPE on the kept documents (word counts summed over
 *      ranks) or load --tokenizer FILE
 *   6. encode, append <|endoftext|> to each document, assign it to train or validation by
 *      a hash of its text, write llm.c shards (uint16 when the vocabulary fits) in input
 *      order, tokenizer.json and manifest.json (sha256 of every file)
 * The result is the same for any number of ranks. */
#ifndef TD_PREP_H
#define TD_PREP_H

#include <stdint.h>

#include "common/status.h"
#include "data/clean.h"
#include "worker/comm/comm.h"

typedef struct {
    const char *const *inputs;
    int n_inputs;
    const char *out_dir;
    const char *text_field;      /* JSON Lines field (default "text") */
    const char *delimiter;       /* a line equal to this separates documents; NULL: whole file */
    const char *tokenizer;       /* existing tokenizer.json, or NULL to train one */
    int vocab_size;              /* when training (default 8192) */
    const char *const *specials; /* special tokens when training, NULL-terminated; NULL =
                                  * td_bpe_default_specials (<|endoftext|> must be among them) */
    double val_fraction;         /* share of documents for validation (default 0.01) */
    long shard_tokens;           /* tokens per shard (default 100 M) */
    td_clean_rules rules;
    int exact_dedup;       /* default 1 */
    double near_threshold; /* Jaccard; <= 0 disables near dedup (default 0.8) */
    int quiet;
} td_prep_opts;

void td_prep_opts_default(td_prep_opts *o);

/* Runs the pipeline on every rank of comm (one rank: td_comm_self_new). On rank 0 prints
 * the summary table unless quiet. */
td_status td_prep_run(const td_prep_opts *o, td_comm *comm);

#endif
