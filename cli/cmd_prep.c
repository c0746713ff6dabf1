/* `tandem prep`: the data pipeline (data/prep.h), single process or under mpirun. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/log.h"
#include "data/bpe.h"
#include "data/prep.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: tandem prep --out DIR [--input PATH]... [options] [PATH...]\n"
            "       mpirun -np N tandem prep ... (same output, input files split over ranks)\n"
            "       [mpirun -np N] tandem prep --chat --tokenizer BASE --out DIR TRAIN.jsonl\n"
            "                      [--chat-val VAL.jsonl]  (conversations for tandem finetune)\n"
            "\n"
            "Reads text files, directories (recursively), JSON Lines (*.jsonl) and their gzip\n"
            "versions (*.gz); cleans, deduplicates, trains a byte-level BPE tokenizer (or uses\n"
            "--tokenizer) and writes llm.c token shards, tokenizer.json and manifest.json to\n"
            "DIR. See docs/prep.md for every rule.\n"
            "\n"
            "input:\n"
            "  --input PATH            a file or directory (repeatable; bare PATHs also work)\n"
            "  --delimiter STR         a line equal to STR separates documents (fortune files:\n"
            "                          '%%'); without it a text file is one document\n"
            "  --format fortune        the same as --delimiter %%\n"
            "  --text-field NAME       JSON Lines field holding the text (default text)\n"
            "cleaning (a document failing a rule is dropped and counted):\n"
            "  --min-chars N           fewer characters (default 16)\n"
            "  --max-chars N           more characters (default 1000000)\n"
            "  --min-letter-ratio F    letters of any script / non-space chars (default 0.5)\n"
            "  --max-symbol-ratio F    symbol chars / non-space chars (default 0.2)\n"
            "  --max-dup-line-frac F   repeated lines / lines (default 0.3)\n"
            "  --max-top-ngram-frac F  chars in the most frequent word 3-gram (default 0.2)\n"
            "  --no-fix-controls       keep escape sequences, overstrikes, control chars\n"
            "  --no-nfc                skip NFC normalisation\n"
            "dedup:\n"
            "  --no-exact-dedup        keep exact duplicates\n"
            "  --near-threshold F      MinHash Jaccard threshold (default 0.8; 0 disables)\n"
            "tokenizer and shards:\n"
            "  --tokenizer FILE        use this tokenizer.json instead of training one\n"
            "  --vocab-size N          vocabulary when training (default 8192; 260 = bytes and\n"
            "                          the special tokens only)\n"
            "  --special TOKEN         reserve another special token (repeatable; <|endoftext|>,\n"
            "                          <|im_start|>, <|im_end|>, <|pad|> are always reserved)\n"
            "  --val-fraction F        share of documents for validation (default 0.01)\n"
            "  --shard-tokens N        tokens per shard (default 100000000)\n"
            "chat data (--chat): JSON Lines conversations ({\"messages\": [...]} or prompt and\n"
            "completion) tokenized with the base's tokenizer and stored with their loss masks;\n"
            "give DIR as a fine-tuning job's data.train (and data.val for --chat-val):\n"
            "  --chat                  the inputs are chat data (one file: the train split)\n"
            "  --chat-val FILE         held-out conversations: the val split\n"
            "  --quiet                 no summary table\n"
            "  -h, --help              this text\n");
}

static int parse_num(const char *opt, const char *arg, double lo, double hi, double *out) {
    char *end;
    double v = strtod(arg, &end);
    if (*end || end == arg || v < lo || v > hi) {
        fprintf(stderr, "tandem prep: --%s wants a number in [%g, %g], got '%s'\n", opt, lo, hi,
                arg);
        return -1;
    }
    *out = v;
    return 0;
}

int td_cmd_prep(int argc, char **argv) {
    enum {
        O_OUT = 1,
        O_INPUT,
        O_DELIM,
        O_FORMAT,
        O_FIELD,
        O_MINC,
        O_MAXC,
        O_LETTER,
        O_SYMBOL,
        O_DUPLINE,
        O_NGRAM,
        O_NOFIX,
        O_NONFC,
        O_NOEXACT,
        O_NEAR,
        O_TOK,
        O_VOCAB,
        O_VAL,
        O_SHARD,
        O_QUIET,
        O_HELP,
        O_SPECIAL,
        O_CHAT,
        O_CHATVAL
    };
    static const struct option opts[] = {{"out", required_argument, 0, O_OUT},
                                         {"input", required_argument, 0, O_INPUT},
                                         {"delimiter", required_argument, 0, O_DELIM},
                                         {"format", required_argument, 0, O_FORMAT},
                                         {"text-field", required_argument, 0, O_FIELD},
                                         {"min-chars", required_argument, 0, O_MINC},
                                         {"max-chars", required_argument, 0, O_MAXC},
                                         {"min-letter-ratio", required_argument, 0, O_LETTER},
                                         {"max-symbol-ratio", required_argument, 0, O_SYMBOL},
                                         {"max-dup-line-frac", required_argument, 0, O_DUPLINE},
                                         {"max-top-ngram-frac", required_argument, 0, O_NGRAM},
                                         {"no-fix-controls", no_argument, 0, O_NOFIX},
                                         {"no-nfc", no_argument, 0, O_NONFC},
                                         {"no-exact-dedup", no_argument, 0, O_NOEXACT},
                                         {"near-threshold", required_argument, 0, O_NEAR},
                                         {"tokenizer", required_argument, 0, O_TOK},
                                         {"vocab-size", required_argument, 0, O_VOCAB},
                                         {"val-fraction", required_argument, 0, O_VAL},
                                         {"shard-tokens", required_argument, 0, O_SHARD},
                                         {"quiet", no_argument, 0, O_QUIET},
                                         {"special", required_argument, 0, O_SPECIAL},
                                         {"chat", no_argument, 0, O_CHAT},
                                         {"chat-val", required_argument, 0, O_CHATVAL},
                                         {"help", no_argument, 0, O_HELP},
                                         {0, 0, 0, 0}};
    td_prep_opts o;
    td_prep_opts_default(&o);
    const char **inputs = calloc((size_t)argc + 1, sizeof *inputs);
    const char **specials = calloc((size_t)argc + 8, sizeof *specials);
    int ni = 0, nsp = 0, c, bad = 0, chat = 0;
    const char *chat_val = NULL;
    double v = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1 && !bad) {
        switch (c) {
        case O_OUT:
            o.out_dir = optarg;
            break;
        case O_INPUT:
            inputs[ni++] = optarg;
            break;
        case O_DELIM:
            o.delimiter = optarg;
            break;
        case O_FORMAT:
            if (!strcmp(optarg, "fortune"))
                o.delimiter = "%";
            else if (strcmp(optarg, "text")) {
                fprintf(stderr, "tandem prep: --format must be text or fortune\n");
                bad = 1;
            }
            break;
        case O_FIELD:
            o.text_field = optarg;
            break;
        case O_MINC:
            bad = parse_num("min-chars", optarg, 0, 1e12, &v) != 0;
            o.rules.min_chars = (long)v;
            break;
        case O_MAXC:
            bad = parse_num("max-chars", optarg, 1, 1e12, &v) != 0;
            o.rules.max_chars = (long)v;
            break;
        case O_LETTER:
            bad = parse_num("min-letter-ratio", optarg, 0, 1, &o.rules.min_letter_ratio) != 0;
            break;
        case O_SYMBOL:
            bad = parse_num("max-symbol-ratio", optarg, 0, 1, &o.rules.max_symbol_ratio) != 0;
            break;
        case O_DUPLINE:
            bad = parse_num("max-dup-line-frac", optarg, 0, 1, &o.rules.max_dup_line_frac) != 0;
            break;
        case O_NGRAM:
            bad = parse_num("max-top-ngram-frac", optarg, 0, 1, &o.rules.max_top_ngram_frac) != 0;
            break;
        case O_NOFIX:
            o.rules.fix_controls = 0;
            break;
        case O_NONFC:
            o.rules.nfc = 0;
            break;
        case O_NOEXACT:
            o.exact_dedup = 0;
            break;
        case O_NEAR:
            bad = parse_num("near-threshold", optarg, 0, 1, &o.near_threshold) != 0;
            break;
        case O_TOK:
            o.tokenizer = optarg;
            break;
        case O_VOCAB:
            bad = parse_num("vocab-size", optarg, 260, 1 << 24, &v) != 0;
            o.vocab_size = (int)v;
            break;
        case O_VAL:
            bad = parse_num("val-fraction", optarg, 0, 1, &o.val_fraction) != 0;
            break;
        case O_SHARD:
            bad = parse_num("shard-tokens", optarg, 1024, 2e9, &v) != 0;
            o.shard_tokens = (long)v;
            break;
        case O_QUIET:
            o.quiet = 1;
            break;
        case O_SPECIAL:
            if (!optarg[0]) {
                fprintf(stderr, "tandem prep: --special needs a non-empty token\n");
                bad = 1;
            }
            specials[nsp++] = optarg;
            break;
        case O_CHAT:
            chat = 1;
            break;
        case O_CHATVAL:
            chat_val = optarg;
            break;
        case O_HELP:
            help(stdout);
            free(inputs);
            free(specials);
            return 0;
        default:
            bad = 1;
        }
    }
    for (int i = optind; i < argc; i++)
        inputs[ni++] = argv[i];
    if (!bad && (!o.out_dir || ni == 0)) {
        fprintf(stderr, "tandem prep: need --out DIR and at least one input\n");
        bad = 1;
    }
    if (!bad && chat_val && !chat) {
        fprintf(stderr, "tandem prep: --chat-val goes with --chat\n");
        bad = 1;
    }
    if (!bad && chat && (ni != 1 || !o.tokenizer)) {
        fprintf(stderr, "tandem prep: --chat takes one JSON Lines file (the train split) and "
                        "--tokenizer (the base's tokenizer.json, or its checkpoint directory)\n");
        bad = 1;
    }
    if (bad) {
        help(stderr);
        free(specials);
        free(inputs);
        return 2;
    }
    o.inputs = inputs;
    o.n_inputs = ni;
    const char **all_sp = NULL;
    if (nsp > 0) { /* the defaults stay reserved, first (so <|endoftext|> is 256); --special adds */
        all_sp = calloc((size_t)nsp + 8, sizeof *all_sp);
        int k = 0;
        for (int i = 0; td_bpe_default_specials[i]; i++)
            all_sp[k++] = td_bpe_default_specials[i];
        for (int i = 0; i < nsp; i++) {
            int dup = 0;
            for (int j = 0; j < k; j++)
                dup |= !strcmp(all_sp[j], specials[i]);
            if (!dup) all_sp[k++] = specials[i];
        }
        all_sp[k] = NULL;
        o.specials = all_sp;
    }
    td_comm *comm = NULL;
    int mpi = td_comm_mpi_init(&argc, &argv, 0);
    td_status s = mpi ? td_comm_mpi_new(&comm) : td_comm_self_new(&comm);
    if (s == TD_OK && comm->rank != 0) {
        td_log_set_rank(comm->rank);
        o.quiet = 1;
    }
    const char *names[2] = {"train", "val"}, *files[2] = {inputs[0], chat_val};
    if (s == TD_OK && chat)
        s = td_prep_chat(comm, o.tokenizer, o.out_dir, names, files, chat_val ? 2 : 1, o.quiet);
    else if (s == TD_OK)
        s = td_prep_run(&o, comm);
    int rc = 0;
    if (s != TD_OK) {
        if (!comm || comm->size == 1 || !strstr(td_error_message(), "another rank failed"))
            rc = td_cli_fail("prep", s);
        else
            rc = td_status_exit_code(s);
    }
    td_comm_free(&comm);
    if (mpi) td_comm_mpi_finalize();
    free(inputs);
    free(specials);
    free(all_sp);
    return rc;
}
