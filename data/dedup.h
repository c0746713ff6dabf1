/* Deduplication of documents, in a fixed global order (the first copy is kept):
 *   exact: 128-bit hash of the normalised text (NFC, white-space runs collapsed to one
 *          space, trimmed, lower-cased ASCII)
 *   near:  MinHash over character 5-gram shingles of the normalised text, K = 128 hash
 *          functions, LSH with 16 bands of 8 rows (a pair with Jaccard J becomes a
 *          candidate with probability 1 - (1 - J^8)^16: 0.95 at J = 0.8), and a candidate
 *          counts as a near duplicate when its estimated Jaccard (share of equal
 *          signature values) reaches the threshold (default 0.8; the estimate's standard
 *          error is sqrt(J (1 - J) / 128), 0.035 at J = 0.8).
 * Signatures are computed per document (in parallel, on any rank); decisions need them
 * all, in order, in one place (td_dedup_decide). */
#ifndef TD_DEDUP_H
#define TD_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#define TD_MINHASH_K 128
#define TD_LSH_BANDS 16
#define TD_LSH_ROWS 8

typedef struct {
    uint64_t exact[2];
    uint32_t minhash[TD_MINHASH_K];
} td_doc_sig;

/* Computes the signature of a cleaned document. */
void td_dedup_signature(const char *text, size_t len, td_doc_sig *sig);

typedef enum { TD_DEDUP_KEEP = 0, TD_DEDUP_EXACT = 1, TD_DEDUP_NEAR = 2 } td_dedup_verdict;

/* Decides, for n signatures in global order, which documents are duplicates of an earlier
 * kept one. verdict[i] receives a td_dedup_verdict. near_threshold <= 0 disables near
 * dedup; exact = 0 disables exact dedup. */
void td_dedup_decide(const td_doc_sig *sigs, size_t n, int exact, double near_threshold,
                     uint8_t *verdict);

/* Estimated Jaccard similarity of two signatures. */
double td_dedup_jaccard(const td_doc_sig *a, const td_doc_sig *b);

#endif
