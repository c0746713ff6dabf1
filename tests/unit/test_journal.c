/* The coordinator's journal: records survive a reopen in order; a torn last record (a crash
 * while appending) is cut off and the journal goes on; a damaged record before the last is
 * refused naming its line, with the file left as it was; a second opener is refused while
 * the first holds the lock; a writer killed with SIGKILL in the middle of appending leaves a
 * journal that opens with every record it had completed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/journal.h"
#include "tests/test.h"

typedef struct {
    long ids[8]; /* the first ones */
    int n;
    int in_order; /* record i has id i (counting from 1) */
} seen;

static td_status collect(void *ctx, const cJSON *rec, long line) {
    seen *s = ctx;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(rec, "id");
    if (!cJSON_IsNumber(id) || line != s->n + 1)
        return td_error_set(TD_ERR_FORMAT, "record %ld has no id", line);
    if (s->n == 0) s->in_order = 1;
    s->in_order &= (long)id->valuedouble == line;
    if (s->n < 8) s->ids[s->n] = (long)id->valuedouble;
    s->n++;
    return TD_OK;
}

static td_status refuse_3(void *ctx, const cJSON *rec, long line) {
    (void)ctx, (void)rec;
    return line == 3 ? td_error_set(TD_ERR_INVALID, "record 3 refused") : TD_OK;
}

static void append_id(td_journal *j, long id) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "event", "submit");
    cJSON_AddNumberToObject(r, "id", (double)id);
    cJSON_AddStringToObject(r, "job", "runs/x/job.json \"quoted\"\nnewline");
    td_status s = td_journal_append(j, r);
    CHECK(s == TD_OK, "append %ld: %s", id, td_error_message());
    cJSON_Delete(r);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static void raw_append(const char *p, const char *bytes) {
    FILE *f = fopen(p, "ab");
    REQUIRE(f, "open %s", p);
    fputs(bytes, f);
    fclose(f);
}

int main(void) {
    char dir[] = "/tmp/test_journal.XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    char path[256];
    snprintf(path, sizeof path, "%s/journal", dir);

    /* ---- append, reopen, replay in order ---- */
    td_journal *j;
    REQUIRE(td_journal_open(path, NULL, NULL, &j) == TD_OK, "%s", td_error_message());
    for (long i = 1; i <= 3; i++)
        append_id(j, i);
    CHECK(td_journal_count(j) == 3, "count %ld", td_journal_count(j));

    /* ---- a second coordinator on the same journal ---- */
    td_journal *j2 = NULL;
    td_status s = td_journal_open(path, NULL, NULL, &j2);
    CHECK(s == TD_ERR_INVALID && strstr(td_error_message(), "in use by another coordinator"),
          "second open: %d %s", s, td_error_message());
    CHECK(j2 == NULL, "second open returned a journal");
    td_journal_free(&j);
    CHECK(j == NULL, "free left the pointer");
    td_journal_free(&j); /* accepts NULL */

    seen a = {.n = 0};
    REQUIRE(td_journal_open(path, collect, &a, &j) == TD_OK, "%s", td_error_message());
    CHECK(a.n == 3 && a.ids[0] == 1 && a.ids[1] == 2 && a.ids[2] == 3, "replayed %d", a.n);
    CHECK(td_journal_torn_bytes(j) == 0, "torn %ld", td_journal_torn_bytes(j));
    td_journal_free(&j);
    long whole = file_size(path);

    /* ---- a torn last record (cut short, no newline) is cut off ---- */
    const char *torn = "0badc0de {\"event\": \"start\", \"id\": 4";
    raw_append(path, torn);
    seen b = {.n = 0};
    REQUIRE(td_journal_open(path, collect, &b, &j) == TD_OK, "torn tail: %s", td_error_message());
    CHECK(b.n == 3, "replayed %d with a torn tail", b.n);
    CHECK(td_journal_torn_bytes(j) == (long)strlen(torn), "torn %ld bytes",
          td_journal_torn_bytes(j));
    CHECK(file_size(path) == whole, "size %ld after the cut, want %ld", file_size(path), whole);
    append_id(j, 4); /* goes on after the cut */
    td_journal_free(&j);
    seen c = {.n = 0};
    REQUIRE(td_journal_open(path, collect, &c, &j) == TD_OK, "%s", td_error_message());
    CHECK(c.n == 4 && c.ids[3] == 4, "after the cut and one more: %d records", c.n);
    td_journal_free(&j);

    /* ---- a whole last line whose CRC does not match is torn as well ---- */
    whole = file_size(path);
    raw_append(path, "00000000 {\"event\": \"exit\", \"id\": 5}\n");
    seen d = {.n = 0};
    REQUIRE(td_journal_open(path, collect, &d, &j) == TD_OK, "%s", td_error_message());
    CHECK(d.n == 4 && file_size(path) == whole, "bad CRC on the last line: %d records, size %ld",
          d.n, file_size(path));
    td_journal_free(&j);

    /* ---- damage before the last record: refused, naming the line, file untouched ---- */
    char *buf = NULL;
    {
        FILE *f = fopen(path, "rb");
        REQUIRE(f, "read back");
        buf = calloc(1, (size_t)whole + 1);
        REQUIRE(buf && fread(buf, 1, (size_t)whole, f) == (size_t)whole, "read");
        fclose(f);
    }
    char *second = strchr(buf, '\n') + 1;
    char *flip = strstr(second, "\"id\":2");
    REQUIRE(flip, "record 2 not found in: %s", buf);
    flip[5] = '7'; /* "id":7 with record 2's CRC */
    {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)whole, f);
        fclose(f);
    }
    seen e = {.n = 0};
    s = td_journal_open(path, collect, &e, &j);
    CHECK(s == TD_ERR_FORMAT && strstr(td_error_message(), "journal:2: not a whole journal record"),
          "damaged line 2: %d %s", s, td_error_message());
    CHECK(file_size(path) == whole, "the refused journal was changed: %ld", file_size(path));
    flip[5] = '2';
    {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)whole, f);
        fclose(f);
    }
    free(buf);

    /* ---- the replay callback's error stops the open ---- */
    s = td_journal_open(path, refuse_3, NULL, &j);
    CHECK(s == TD_ERR_INVALID && strstr(td_error_message(), "record 3 refused") && !j,
          "replay error: %d %s", s, td_error_message());

    /* ---- a writer killed mid-stream ---- */
    char kpath[256];
    snprintf(kpath, sizeof kpath, "%s/killed", dir);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        td_journal *w;
        if (td_journal_open(kpath, NULL, NULL, &w) != TD_OK) _exit(3);
        for (long i = 1;; i++)
            append_id(w, i);
    }
    for (int i = 0; i < 200 && file_size(kpath) < 4000; i++)
        usleep(10000);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st), "the writer was not killed");
    seen k = {.n = 0};
    s = td_journal_open(kpath, collect, &k, &j);
    CHECK(s == TD_OK, "after SIGKILL: %s", td_error_message());
    CHECK(k.n > 0 && k.in_order, "after SIGKILL: %d records, in order %d", k.n, k.in_order);
    printf("killed writer: %d whole records, %ld torn bytes cut\n", k.n,
           j ? td_journal_torn_bytes(j) : -1);
    td_journal_free(&j);

    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    return test_done("test_journal");
}
