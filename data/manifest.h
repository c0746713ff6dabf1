/* Checking a data directory against the manifest.json that `tandem prep` wrote beside its
 * shards: every shard listed is there with the size its token count implies, no .bin file
 * is there that the manifest does not list, the tokenizer.json is the one the shards were
 * made with (its sha256), and — when asked, since it reads every byte — each shard's
 * sha256. A directory without manifest.json (shards made by another tool) passes. */
#ifndef TD_MANIFEST_H
#define TD_MANIFEST_H

#include "common/status.h"

typedef struct {
    int shards;       /* shards listed and checked */
    double bytes;     /* their bytes */
    int hashed;       /* shards whose sha256 was checked */
    double hash_s;    /* seconds spent hashing */
    int has_manifest; /* 0: no manifest.json, nothing checked */
} td_manifest_report;

/* TD_ERR_FORMAT naming the first file that differs (or TD_ERR_INVALID for a manifest that
 * does not parse); hashes: also compare every shard's sha256. */
td_status td_manifest_check(const char *dir, int hashes, td_manifest_report *rep);

#endif
