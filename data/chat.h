/* Conversations as token ids: the ChatML prompt a replica builds for a chat request, and the
 * supervised examples fine-tuning learns from (docs/finetune.md, "Data").
 *
 * ChatML: "<|im_start|>role\ncontent<|im_end|>\n" per message; a prompt ends with
 * "<|im_start|>assistant\n". The markers are special tokens, roles and contents ordinary
 * text, so a user cannot forge a turn by typing "<|im_end|>".
 *
 * A supervised example is one conversation (or prompt and completion) as ids with a mask:
 * mask[i] = 1 where the loss counts token i -- the assistant's words and the <|im_end|> that
 * ends each assistant turn (a completion's words and <|endoftext|>), never the prompt. The
 * assistant's turn is encoded as the prompt a replica sends ("assistant\n"), followed by the
 * answer, so that what the model learns to continue is what serving will ask it. */
#ifndef TD_CHAT_H
#define TD_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "data/bpe.h"

/* The ChatML prompt for messages (role, content pairs), then "<|im_start|>assistant\n".
 * Returns a malloc'd string. */
char *td_chatml_prompt(const char *const *roles, const char *const *contents, int n);
/* The same prompt as token ids (equal to encoding td_chatml_prompt's text when no content
 * holds special-token text). Writes *n_ids ids into (*ids, *cap), grown as needed. */
td_status td_chatml_encode(td_bpe *tok, const char *const *roles, const char *const *contents,
                           int n, int32_t **ids, size_t *cap, size_t *n_ids);

/* One supervised example. */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    int n;
    long line; /* line of the JSONL file it came from */
} td_sft_example;

/* A set of examples, and what loading it skipped. */
typedef struct {
    td_sft_example *ex;
    int n;
    size_t cap;
    long dropped_long;    /* longer than the maximum length: dropped */
    long truncated;       /* longer than the maximum length: cut (overlong "truncate") */
    long tokens, counted; /* all tokens; tokens the loss counts */
    int max_tokens;       /* the longest example kept */
    int32_t max_id;       /* the largest token id */
} td_sft_set;

typedef enum { TD_SFT_DROP, TD_SFT_TRUNCATE } td_sft_overlong;

/* Reads JSON Lines of {"messages": [{"role", "content"}, ...]} (roles system, user,
 * assistant; at least one assistant turn) or {"prompt", "completion"}; blank lines are
 * skipped. Examples longer than max_tokens are dropped or truncated (counted in the set).
 * Errors name the file and line: malformed JSON, a missing or non-string field, an unknown
 * role, a conversation without an assistant turn, an example that trains on nothing. */
td_status td_sft_load_jsonl(const char *path, td_bpe *tok, int max_tokens, td_sft_overlong policy,
                            td_sft_set *out);
/* Lines part, part + nparts, ... only (0-based line numbers modulo nparts): ranks that
 * tokenize one file together (tandem prep --chat under mpirun). */
td_status td_sft_load_jsonl_part(const char *path, td_bpe *tok, int max_tokens,
                                 td_sft_overlong policy, int part, int nparts, td_sft_set *out);
/* Adds one example (copied) to a set, applying the length policy as the loaders do. */
td_status td_sft_set_add(td_sft_set *set, const int32_t *ids, const uint8_t *mask, int n, long line,
                         int max_tokens, td_sft_overlong policy);
void td_sft_set_free(td_sft_set *s);

/* Batches of examples for (data-parallel) training: each epoch a shuffled order of the
 * examples (seeded); a global batch is the next `global_batch` examples of that order, and
 * this rank takes examples [begin, end) of it. Rows are padded to the longest example of the
 * rank's batch: tokens 0, targets -1; target i is ids[i+1] where mask[i+1], else -1. */
typedef struct td_sft_loader td_sft_loader;
td_status td_sft_loader_new(const td_sft_set *set, int global_batch, int begin, int end,
                            uint64_t seed, int shuffle, td_sft_loader **out);
void td_sft_loader_free(td_sft_loader **l);
/* Fills tokens/targets (end-begin rows of *T each, *T <= the longest example - 1) and moves
 * to the next global batch. */
void td_sft_loader_next(td_sft_loader *l, int32_t *tokens, int32_t *targets, int *T);
/* Positions of the last batch that hold an example's token (the rest is padding). */
long td_sft_loader_last_real(const td_sft_loader *l);
/* Targets the loss counts in the next k global batches (all ranks' rows), without moving:
 * the step's normalizer, so that a step's loss is the mean over its tokens whatever the
 * number of ranks. */
long td_sft_loader_peek_counted(const td_sft_loader *l, int k);
void td_sft_loader_get_pos(const td_sft_loader *l, int64_t *epoch, int64_t *cursor);
void td_sft_loader_set_pos(td_sft_loader *l, int64_t epoch, int64_t cursor);
void td_sft_loader_reset(td_sft_loader *l);
/* Whole global batches in one pass over the set. */
long td_sft_loader_batches(const td_sft_loader *l);

#endif
