/* `tandem synthesize --model TEACHER --prompts F --out OUT.jsonl`: data distillation. The
 * teacher answers every prompt n times with the inference engine (continuous batching over
 * all samples), each answer optionally checked (an exact-match key, or a checker script with
 * a time limit), and the kept ones are written as chat JSON Lines for `tandem finetune`.
 * The output appears whole or not at all (one atomic write at the end). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/fsutil.h"
#include "common/json.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/timeutil.h"
#include "common/utf8.h"
#include "data/bpe.h"
#include "data/chat.h"
#include "worker/infer/engine.h"
#include "worker/infer/replica.h"
#include "worker/model/checkpoint.h"

static void help(FILE *f) {
    fprintf(
        f, "usage: tandem synthesize --model DIR --prompts F --out OUT.jsonl [options]\n"
           "\n"
           "Data distillation: the model (a teacher checkpoint) answers every prompt --n times;\n"
           "the answers that pass the check are written as chat JSON Lines ({\"messages\": [...,\n"
           "{\"role\": \"assistant\", ...}]}) that tandem finetune reads. All samples run through\n"
           "the inference engine together (continuous batching). OUT is written once, at the end,\n"
           "or not at all. See docs/distill.md.\n"
           "\n"
           "  --model DIR          teacher checkpoint (config.json, model.safetensors,\n"
           "                       tokenizer.json)\n"
           "  --prompts F          JSON Lines: {\"messages\": [...]} ending with a user turn, or\n"
           "                       {\"prompt\": TEXT}; other fields are kept for the checks\n"
           "  --out OUT.jsonl      the kept answers, as conversations\n"
           "  --n N                answers per prompt (default 1)\n"
           "  --max-tokens N       longest answer (default 256); an answer cut there is dropped\n"
           "  --temperature T      sampling temperature (default 0.7; 0 = greedy)\n"
           "  --top-p P            nucleus mass (default 1.0)   --top-k K  (default 0 = all)\n"
           "  --stop TEXT          end an answer at TEXT (not included; repeatable, up to 8);\n"
           "                       the end of the assistant's turn always ends it\n"
           "  --seed S             sample (i, j) of prompt i uses seed S + i * n + j (default 1)\n"
           "  --answer-key KEY     keep an answer only when it matches the prompt line's field\n"
           "                       KEY exactly (after trimming spaces), compared with the text\n"
           "                       after the last --answer-after TEXT if given (else the whole\n"
           "                       answer)\n"
           "  --answer-after TEXT  where the final answer starts (e.g. \"answer \")\n"
           "  --checker PATH       run PATH per answer with {\"index\", \"sample\", \"record\",\n"
           "                       \"completion\"} as JSON on stdin: exit 0 keeps it, 1 rejects\n"
           "                       it; any other end (another code, a signal, the time limit)\n"
           "                       stops the run with exit 2\n"
           "  --check-timeout S    time limit per checker run in seconds (default 10)\n"
           "  --max-seqs N         sequences decoded together (default 16)\n"
           "  --no-verify          load the checkpoint without checking its SHA256SUMS\n"
           "  --quiet              no progress line\n"
           "  -h, --help           this text\n");
}

typedef struct {
    cJSON *rec;           /* the prompt line */
    const char **roles;   /* its messages (borrowed from rec) */
    const char **content; /* ... */
    int n_msgs;
} prompt_t;

typedef struct {
    int id;       /* engine request, -1 when done and released */
    int done;     /* 1 kept, 2 rejected by the check, 3 cut at --max-tokens */
    char *text;   /* the answer */
    int n_tokens; /* generated tokens */
} sample_t;

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* Exact match of the answer (the text after the last `after`, or all of it) with key. */
static int exact_match(const char *text, const char *after, const char *key) {
    const char *from = text;
    if (after && after[0]) {
        const char *p = NULL, *q = text;
        while ((q = strstr(q, after)) != NULL)
            p = q++;
        if (!p) return 0;
        from = p + strlen(after);
    }
    char *a = strdup(from), *k = strdup(key);
    int eq = a && k && !strcmp(trim(a), trim(k));
    free(a);
    free(k);
    return eq;
}

/* The running checker's process group: a stop signal ends it with us, so that no checker
 * (nor a child it left behind) outlives the run. */
static volatile pid_t g_checker;

static void on_stop(int sig) {
    pid_t p = g_checker;
    if (p > 0) kill(-p, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Runs the checker on one answer: 1 keep, 0 reject, -1 failure (message set). */
static int run_checker(const char *path, double timeout_s, const char *input, int index,
                       int sample) {
    int in[2], err[2];
    if (pipe(in) || pipe(err)) {
        td_error_set(TD_ERR_IO, "--checker: cannot make a pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        td_error_set(TD_ERR_IO, "--checker: cannot fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0); /* its own group: a time limit ends its children too */
        dup2(in[0], 0);
        dup2(err[1], 2);
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1);
        close(in[1]);
        close(err[0]);
        execl(path, path, (char *)NULL);
        fprintf(stderr, "cannot run it: %s", strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    g_checker = pid;
    close(in[0]);
    close(err[1]);
    /* the input is small (one record and answer); a checker that does not read it gets
     * EPIPE, which is ignored */
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    size_t len = strlen(input), off = 0;
    while (off < len) {
        ssize_t w = write(in[1], input + off, len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    close(in[1]);
    signal(SIGPIPE, old);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    char tail[512] = "";
    size_t tl = 0;
    double t0 = td_time_now();
    int status = 0, timed_out = 0;
    for (;;) {
        char buf[256];
        ssize_t r;
        while ((r = read(err[0], buf, sizeof buf)) > 0) { /* keep the last bytes of stderr */
            for (ssize_t i = 0; i < r; i++) {
                if (tl == sizeof tail - 1) {
                    memmove(tail, tail + 1, tl - 1);
                    tl--;
                }
                tail[tl++] = buf[i];
            }
            tail[tl] = '\0';
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) break;
        if (td_time_now() - t0 > timeout_s) {
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            timed_out = 1;
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    close(err[0]);
    kill(-pid, SIGKILL); /* what it left running in the background */
    g_checker = 0;
    char *why = trim(tail);
    if (timed_out) {
        td_error_set(TD_ERR_INVALID,
                     "--checker %s did not finish within %g s (prompt %d, sample %d); raise "
                     "--check-timeout if it needs longer",
                     path, timeout_s, index + 1, sample + 1);
        return -1;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) <= 1) return WEXITSTATUS(status) == 0;
    if (WIFEXITED(status))
        td_error_set(TD_ERR_INVALID,
                     "--checker %s failed on prompt %d, sample %d: exit %d%s%s (exit 0 keeps an "
                     "answer, 1 rejects it; anything else is a failure)",
                     path, index + 1, sample + 1, WEXITSTATUS(status), why[0] ? ": " : "", why);
    else
        td_error_set(TD_ERR_INVALID,
                     "--checker %s was killed by signal %d on prompt %d, sample %d%s%s", path,
                     WTERMSIG(status), index + 1, sample + 1, why[0] ? ": " : "", why);
    return -1;
}

/* Reads the prompts file: each line a conversation to answer. Errors name path:line. */
static td_status read_prompts(const char *path, const char *key, prompt_t **out, int *n) {
    FILE *f = td_fs_is_dir(path) ? NULL : fopen(path, "r");
    if (!f)
        return td_error_set(
            errno == ENOENT ? TD_ERR_NOTFOUND : TD_ERR_INVALID, "--prompts %s: %s", path,
            td_fs_is_dir(path) ? "a directory, not a JSON Lines file" : strerror(errno));
    char *buf = NULL;
    size_t cap = 0, pcap = 0;
    ssize_t len;
    long line = 0;
    td_status s = TD_OK;
    prompt_t *p = NULL;
    int np = 0;
    while (s == TD_OK && (len = getline(&buf, &cap, f)) >= 0) {
        line++;
        char *t = trim(buf);
        if (!*t) continue;
        if (strstr(t, "\\u0000")) { /* C strings would cut the text there */
            s = td_error_set(TD_ERR_FORMAT, "%s:%ld: the line holds a NUL character (\\u0000)",
                             path, line);
            break;
        }
        cJSON *o = cJSON_Parse(t);
        if (!o || !cJSON_IsObject(o)) {
            s = td_error_set(TD_ERR_FORMAT, "%s:%ld: %s", path, line,
                             o ? "not a JSON object"
                               : "not valid JSON (or a lone UTF-16 surrogate)");
            cJSON_Delete(o);
            break;
        }
        if ((size_t)np == pcap) {
            pcap = pcap ? 2 * pcap : 64;
            prompt_t *np2 = realloc(p, pcap * sizeof *p);
            if (!np2) {
                cJSON_Delete(o);
                s = td_error_set(TD_ERR_NOMEM, "out of memory reading %s", path);
                break;
            }
            p = np2;
        }
        prompt_t *q = &p[np++];
        memset(q, 0, sizeof *q);
        q->rec = o;
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        int nm = msgs ? cJSON_GetArraySize(msgs) : 1;
        q->roles = calloc((size_t)nm + 1, sizeof *q->roles);
        q->content = calloc((size_t)nm + 1, sizeof *q->content);
        if (!q->roles || !q->content) {
            s = td_error_set(TD_ERR_NOMEM, "out of memory reading %s", path);
            break;
        }
        if (msgs && pr) {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s:%ld: has both \"messages\" and \"prompt\"; give one of them", path,
                             line);
        } else if (cJSON_IsArray(msgs) && nm > 0) {
            for (int i = 0; i < nm && s == TD_OK; i++) {
                const cJSON *m = cJSON_GetArrayItem(msgs, i);
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
                const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
                if (!cJSON_IsString(r) || !cJSON_IsString(c) ||
                    (strcmp(r->valuestring, "system") && strcmp(r->valuestring, "user") &&
                     strcmp(r->valuestring, "assistant")))
                    s = td_error_set(TD_ERR_FORMAT,
                                     "%s:%ld: message %d needs a role (system, user or assistant) "
                                     "and a string content",
                                     path, line, i + 1);
                else {
                    q->roles[i] = r->valuestring;
                    q->content[i] = c->valuestring;
                }
            }
            if (s == TD_OK && strcmp(q->roles[nm - 1], "user"))
                s = td_error_set(TD_ERR_FORMAT,
                                 "%s:%ld: the conversation must end with a user turn (the "
                                 "teacher writes the assistant's)",
                                 path, line);
            q->n_msgs = nm;
        } else if (cJSON_IsString(pr)) {
            q->roles[0] = "user";
            q->content[0] = pr->valuestring;
            q->n_msgs = 1;
        } else {
            s = td_error_set(TD_ERR_FORMAT,
                             "%s:%ld: expected {\"messages\": [...]} or {\"prompt\": TEXT}", path,
                             line);
        }
        if (s == TD_OK && key) {
            const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, key);
            if (!cJSON_IsString(k) && !cJSON_IsNumber(k))
                s = td_error_set(TD_ERR_FORMAT,
                                 "%s:%ld: --answer-key %s: the line has no such string or number "
                                 "field",
                                 path, line, key);
        }
    }
    free(buf);
    fclose(f);
    *out = p;
    *n = np;
    if (s == TD_OK && np == 0) s = td_error_set(TD_ERR_FORMAT, "--prompts %s: no prompts", path);
    return s;
}

static void free_prompts(prompt_t *p, int n) {
    for (int i = 0; i < n; i++) {
        cJSON_Delete(p[i].rec);
        free(p[i].roles);
        free(p[i].content);
    }
    free(p);
}

/* The field as text: a string as it is, a number as JSON writes it. */
static char *key_text(const cJSON *rec, const char *key) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(rec, key);
    if (cJSON_IsString(k)) return strdup(k->valuestring);
    char buf[64];
    double v = k->valuedouble;
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, sizeof buf, "%.0f", v);
    else
        snprintf(buf, sizeof buf, "%.17g", v);
    return strdup(buf);
}

int td_cmd_synthesize(int argc, char **argv) {
    enum { O_AFTER = 256, O_TIMEOUT, O_SEQS, O_NOVERIFY, O_TOPK, O_TOPP, O_STOP };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompts", required_argument, 0, 'p'},
                                         {"out", required_argument, 0, 'o'},
                                         {"n", required_argument, 0, 'n'},
                                         {"max-tokens", required_argument, 0, 'M'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"top-p", required_argument, 0, O_TOPP},
                                         {"top-k", required_argument, 0, O_TOPK},
                                         {"seed", required_argument, 0, 's'},
                                         {"answer-key", required_argument, 0, 'k'},
                                         {"answer-after", required_argument, 0, O_AFTER},
                                         {"checker", required_argument, 0, 'c'},
                                         {"stop", required_argument, 0, O_STOP},
                                         {"check-timeout", required_argument, 0, O_TIMEOUT},
                                         {"max-seqs", required_argument, 0, O_SEQS},
                                         {"no-verify", no_argument, 0, O_NOVERIFY},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model_dir = NULL, *prompts_path = NULL, *out_path = NULL, *key = NULL;
    const char *after = NULL, *checker = NULL;
    long n = 1, max_tokens = 256, top_k = 0, seed = 1, max_seqs = 16;
    double temp = 0.7, top_p = 1.0, check_timeout = 10;
    int c, no_verify = 0, quiet = 0, nstop = 0;
    const char *stop[10] = {0};
    optind = 1;
    int longindex = 0;
    while ((c = getopt_long(argc, argv, "h", opts, &longindex)) != -1) {
        int bad = 0, li = longindex;
        const char *range = "";
        switch (c) {
        case 'm':
            model_dir = optarg;
            break;
        case 'p':
            prompts_path = optarg;
            break;
        case 'o':
            out_path = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case O_AFTER:
            after = optarg;
            break;
        case 'c':
            checker = optarg;
            break;
        case 'n':
            bad = !td_cli_long(optarg, 1, 1000, &n);
            range = "an integer from 1 to 1000";
            break;
        case 'M':
            bad = !td_cli_long(optarg, 1, 1000000, &max_tokens);
            range = "an integer from 1 to 1000000";
            break;
        case O_TOPK:
            bad = !td_cli_long(optarg, 0, 1000000000, &top_k);
            range = "an integer >= 0";
            break;
        case 's':
            bad = !td_cli_long(optarg, 0, 1L << 50, &seed);
            range = "an integer >= 0";
            break;
        case O_SEQS:
            bad = !td_cli_long(optarg, 1, 1024, &max_seqs);
            range = "an integer from 1 to 1024";
            break;
        case 'T':
            bad = !td_cli_double(optarg, 0, 100, &temp);
            range = "a number from 0 to 100";
            break;
        case O_TOPP:
            bad = !td_cli_double(optarg, 1e-9, 1, &top_p);
            range = "a number in (0, 1]";
            break;
        case O_TIMEOUT:
            bad = !td_cli_double(optarg, 1e-3, 86400, &check_timeout);
            range = "seconds from 0.001 to 86400";
            break;
        case O_STOP:
            bad = nstop == 8 || !optarg[0];
            if (!bad) stop[nstop++] = optarg;
            break;
        case O_NOVERIFY:
            no_verify = 1;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            help(stdout);
            return 0;
        default:
            help(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "tandem synthesize: --%s %s: expected %s\n", opts[li].name, optarg,
                    range[0] ? range : "a value (see --help)");
            return 2;
        }
    }
    stop[nstop] = "<|im_end|>"; /* the end of the assistant's turn */
    if (!model_dir || !prompts_path || !out_path || optind != argc) {
        fprintf(stderr, "tandem synthesize: need --model, --prompts and --out%s\n",
                optind != argc ? " (and no other arguments)" : "");
        help(stderr);
        return 2;
    }
    if (after && !key) {
        fprintf(stderr, "tandem synthesize: --answer-after goes with --answer-key\n");
        return 2;
    }
    /* where OUT goes, checked before the teacher's time is spent */
    struct stat so, sp;
    char parent[4096];
    td_fs_dirname(out_path, parent, sizeof parent);
    if (!out_path[0] || !td_fs_is_dir(parent)) {
        fprintf(stderr, "tandem synthesize: --out %s: the directory %s does not exist\n", out_path,
                parent);
        return 2;
    }
    if (stat(out_path, &so) == 0) {
        int same = stat(prompts_path, &sp) == 0 && so.st_dev == sp.st_dev && so.st_ino == sp.st_ino;
        fprintf(stderr, "tandem synthesize: --out %s %s; choose another path%s\n", out_path,
                same ? "is the prompts file" : "already exists", same ? "" : " (or remove it)");
        return 2;
    }
    if (checker && td_fs_is_dir(checker)) {
        fprintf(stderr, "tandem synthesize: --checker %s is a directory, not a program\n", checker);
        return 2;
    }
    if (checker && access(checker, X_OK) != 0) {
        fprintf(stderr, "tandem synthesize: --checker %s: %s\n", checker,
                access(checker, F_OK) ? "no such file" : "not executable (chmod +x it)");
        return 2;
    }
    prompt_t *pr = NULL;
    int np = 0;
    td_status s = read_prompts(prompts_path, key, &pr, &np);
    if (s != TD_OK) {
        free_prompts(pr, np);
        return td_cli_fail("synthesize", s);
    }
    td_model *m = NULL;
    td_bpe *tok = NULL;
    td_infer_model *im = NULL;
    td_engine *e = NULL;
    sample_t *sm = NULL;
    int32_t *ids = NULL;
    size_t icap = 0;
    char *blob = NULL;
    size_t blob_len = 0;
    s = td_checkpoint_check(model_dir, no_verify);
    if (s == TD_OK) s = td_checkpoint_load_model(model_dir, &m);
    char p[4200];
    snprintf(p, sizeof p, "%s/tokenizer.json", model_dir);
    if (s == TD_OK) s = td_bpe_load(p, &tok);
    int maxT = m ? td_model_config_of(m)->max_position_embeddings : 0;
    if (s == TD_OK) s = td_infer_model_new(m, &im);
    if (s == TD_OK) m = NULL; /* the serving model owns it */
    td_engine_opts eo = {.max_seqs = (int)max_seqs};
    if (s == TD_OK) s = td_engine_new(im, tok, &eo, &e);
    long total = (long)np * n;
    if (s == TD_OK && !(sm = calloc((size_t)total, sizeof *sm)))
        s = td_error_set(TD_ERR_NOMEM, "out of memory for %ld samples", total);
    /* every sample queued at once: the engine admits them as KV blocks allow */
    for (long k = 0; s == TD_OK && k < total; k++) {
        int i = (int)(k / n);
        size_t len = 0;
        s = td_chatml_encode(tok, pr[i].roles, pr[i].content, pr[i].n_msgs, &ids, &icap, &len);
        if (s != TD_OK) break;
        if ((long)len + max_tokens > maxT) {
            s = td_error_set(TD_ERR_INVALID,
                             "%s: prompt %d is %zu tokens; with --max-tokens %ld it exceeds the "
                             "model's context of %d",
                             prompts_path, i + 1, len, max_tokens, maxT);
            break;
        }
        Tandem__Sampling rq = TANDEM__SAMPLING__INIT;
        rq.has_temperature = rq.has_top_k = rq.has_top_p = rq.has_seed = rq.has_max_tokens = 1;
        rq.temperature = (float)temp;
        rq.top_k = (int32_t)top_k;
        rq.top_p = (float)top_p;
        rq.seed = (uint64_t)(seed + k);
        rq.max_tokens = (int32_t)max_tokens;
        td_sampling sp = td_sampling_of(&rq, TD_API_OPENAI, 1, stop, rq.seed);
        s = td_engine_submit(e, ids, (int)len, &sp, &sm[k].id);
    }
    if (s == TD_OK && !quiet)
        printf("synthesize: %d prompts x %ld = %ld samples from %s (max %ld tokens each, "
               "temperature %g)%s%s\n",
               np, n, total, model_dir, max_tokens, temp,
               key       ? ", exact match against the field "
               : checker ? ", checker "
                         : "",
               key       ? key
               : checker ? checker
                         : "");
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    long kept = 0, rejected = 0, cut = 0, gen = 0, finished = 0;
    double t0 = td_time_now(), last_print = 0;
    int active = 1;
    long open_from = 0; /* samples before it are all finished */
    while (s == TD_OK && active) {
        s = td_engine_step(e, &active);
        /* the answers that just finished: the engine admits in submission order, so those
         * running lie between the first unfinished sample and the first still waiting */
        while (open_from < total && sm[open_from].id < 0)
            open_from++;
        for (long k = open_from; s == TD_OK && k < total; k++) {
            if (sm[k].id < 0) continue;
            td_req_state rs = td_engine_state(e, sm[k].id);
            if (rs == TD_REQ_WAITING) break;
            if (rs != TD_REQ_DONE) continue;
            int i = (int)(k / n), cnt;
            size_t tl;
            const char *text = td_engine_text(e, sm[k].id, &tl);
            td_engine_tokens(e, sm[k].id, &cnt);
            sm[k].text = malloc(3 * tl + 1); /* as valid UTF-8: bad bytes become U+FFFD */
            if (sm[k].text) td_utf8_repair(text, tl, sm[k].text);
            sm[k].n_tokens = cnt;
            gen += cnt;
            finished++;
            td_finish why = td_engine_finish_reason(e, sm[k].id);
            td_engine_release(e, sm[k].id);
            sm[k].id = -1;
            if (!sm[k].text) {
                s = td_error_set(TD_ERR_NOMEM, "out of memory");
                break;
            }
            if (why == TD_FINISH_LENGTH) {
                sm[k].done = 3;
                cut++;
                continue;
            }
            char *tt = strdup(sm[k].text);
            int ok = tt && trim(tt)[0] != '\0'; /* an empty answer teaches nothing */
            free(tt);
            if (ok && key) {
                char *want = key_text(pr[i].rec, key);
                ok = want && exact_match(sm[k].text, after, want);
                free(want);
            }
            if (ok && checker) {
                cJSON *in = cJSON_CreateObject();
                cJSON_AddNumberToObject(in, "index", i);
                cJSON_AddNumberToObject(in, "sample", (double)(k % n));
                cJSON_AddItemToObject(in, "record", cJSON_Duplicate(pr[i].rec, 1));
                cJSON_AddStringToObject(in, "completion", sm[k].text);
                char *js = cJSON_PrintUnformatted(in);
                cJSON_Delete(in);
                ok = js ? run_checker(checker, check_timeout, js, i, (int)(k % n)) : -1;
                free(js);
                if (ok < 0) {
                    s = TD_ERR_INVALID;
                    break;
                }
            }
            sm[k].done = ok ? 1 : 2;
            kept += ok;
            rejected += !ok;
        }
        double now = td_time_now();
        if (!quiet && (now - last_print > 0.5 || !active)) {
            char line[200];
            snprintf(line, sizeof line,
                     "synthesize: %ld/%ld answers, kept %ld, rejected %ld, cut %ld, %.0f tokens/s",
                     finished, total, kept, rejected, cut, gen / (now - t0 + 1e-9));
            td_progress_line(line);
            last_print = now;
        }
    }
    if (!quiet) td_progress_done();
    double dt = td_time_now() - t0;
    /* the kept answers in prompt order, as conversations */
    FILE *f = s == TD_OK ? open_memstream(&blob, &blob_len) : NULL;
    if (s == TD_OK && !f) s = td_error_set(TD_ERR_NOMEM, "out of memory");
    for (long k = 0; s == TD_OK && k < total; k++) {
        if (sm[k].done != 1) continue;
        const prompt_t *q = &pr[k / n];
        cJSON *o = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(o, "messages");
        for (int j = 0; j < q->n_msgs; j++) {
            cJSON *mm = cJSON_CreateObject();
            size_t cl = strlen(q->content[j]);
            char *fixed = malloc(3 * cl + 1); /* the prompt's bytes as valid UTF-8 too */
            if (fixed) td_utf8_repair(q->content[j], cl, fixed);
            cJSON_AddStringToObject(mm, "role", q->roles[j]);
            cJSON_AddStringToObject(mm, "content", fixed ? fixed : "");
            free(fixed);
            cJSON_AddItemToArray(msgs, mm);
        }
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        cJSON_AddStringToObject(a, "content", sm[k].text);
        cJSON_AddItemToArray(msgs, a);
        char *js = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!js) {
            s = td_error_set(TD_ERR_NOMEM, "out of memory");
            break;
        }
        fprintf(f, "%s\n", js);
        free(js);
    }
    if (f) fclose(f);
    if (s == TD_OK) s = td_fs_write_file_atomic(out_path, blob ? blob : "", blob_len);
    /* where the answers came from, beside them: a fine-tune on OUT copies it into the
     * student's lineage */
    if (s == TD_OK) {
        cJSON *src = cJSON_CreateObject();
        char sha[65], *abs;
        cJSON_AddStringToObject(src, "produced_by", "tandem synthesize");
        abs = realpath(model_dir, NULL);
        cJSON_AddStringToObject(src, "teacher", abs ? abs : model_dir);
        free(abs);
        snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
        if (td_sha256_file(p, sha) == TD_OK)
            cJSON_AddStringToObject(src, "teacher_weights_sha256", sha);
        cJSON *tl = td_checkpoint_lineage(model_dir);
        if (tl) cJSON_AddItemToObject(src, "teacher_lineage", tl);
        abs = realpath(prompts_path, NULL);
        cJSON_AddStringToObject(src, "prompts", abs ? abs : prompts_path);
        free(abs);
        if (td_sha256_file(prompts_path, sha) == TD_OK)
            cJSON_AddStringToObject(src, "prompts_sha256", sha);
        td_sha256_hex(blob ? blob : "", blob_len, sha);
        cJSON_AddStringToObject(src, "sha256", sha);
        cJSON_AddNumberToObject(src, "n", (double)n);
        cJSON_AddNumberToObject(src, "temperature", temp);
        cJSON_AddNumberToObject(src, "top_p", top_p);
        cJSON_AddNumberToObject(src, "top_k", (double)top_k);
        cJSON_AddNumberToObject(src, "seed", (double)seed);
        cJSON_AddNumberToObject(src, "max_tokens", (double)max_tokens);
        if (key) cJSON_AddStringToObject(src, "answer_key", key);
        if (after) cJSON_AddStringToObject(src, "answer_after", after);
        if (checker) {
            abs = realpath(checker, NULL);
            cJSON_AddStringToObject(src, "checker", abs ? abs : checker);
            free(abs);
        }
        cJSON_AddNumberToObject(src, "samples", (double)total);
        cJSON_AddNumberToObject(src, "kept", (double)kept);
        cJSON_AddNumberToObject(src, "rejected", (double)rejected);
        cJSON_AddNumberToObject(src, "cut", (double)cut);
        snprintf(p, sizeof p, "%s.source.json", out_path);
        s = td_json_save_file(p, src);
        cJSON_Delete(src);
        if (s != TD_OK) unlink(out_path); /* the answers go only with their source */
    }
    if (s == TD_OK && kept == 0)
        fprintf(stderr, "tandem synthesize: warning: no answer was kept; %s is empty\n", out_path);
    if (s == TD_OK && !quiet)
        printf("synthesize: %ld answers in %.1f s (%ld tokens, %.1f tokens/s); kept %ld "
               "(%.1f%%), rejected %ld, cut at --max-tokens %ld; wrote %s\n",
               total, dt, gen, dt > 0 ? gen / dt : 0.0, kept, total ? 100.0 * kept / total : 0.0,
               rejected, cut, out_path);
    for (long k = 0; sm && k < total; k++)
        free(sm[k].text);
    free(sm);
    free(blob);
    free(ids);
    td_engine_free(&e);
    td_infer_model_free(&im);
    td_model_free(&m);
    td_bpe_free(&tok);
    free_prompts(pr, np);
    if (s != TD_OK) return td_cli_fail("synthesize", s);
    return 0;
}
