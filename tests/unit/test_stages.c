/* Job files and pipelines as the coordinator reads them (coordinator/stages.h): the kind of
 * a file, the checks of prep and serve sections, the command lines built from them (exact
 * argument lists), dotted inputs, the outputs stages hand on, serve's model names, and
 * pipeline files, valid and not. Files live in a fresh temporary directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/stages.h"
#include "tests/test.h"

static char g_dir[] = "/tmp/test_stages.XXXXXX";

static void put(const char *name, const char *text) {
    char p[256];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "w");
    REQUIRE(f, "%s", p);
    fputs(text, f);
    fclose(f);
}

static char *joined(const td_argv *a) {
    static char b[4096];
    b[0] = 0;
    for (int i = 0; i < a->n; i++) {
        size_t l = strlen(b);
        snprintf(b + l, sizeof b - l, "%s%s", i ? " " : "", a->v[i]);
    }
    return b;
}

/* The argv of a job given as JSON text, or the error message. */
static const char *argv_of(const char *kind, const char *json, int resume) {
    static char out[4096];
    cJSON *doc = cJSON_Parse(json);
    REQUIRE(doc, "not JSON: %s", json);
    td_stage_env env = {"tcp://127.0.0.1:5581", 1, resume};
    td_argv a;
    if (td_stage_argv(kind, "/s/job.json", doc, &env, &a) == TD_OK) {
        snprintf(out, sizeof out, "%s", joined(&a));
        td_argv_free(&a);
    } else {
        snprintf(out, sizeof out, "error: %s", td_error_message());
        td_error_clear();
    }
    cJSON_Delete(doc);
    return out;
}

static const char *load_error(const char *name, int slots) {
    static char out[1200];
    char p[256];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    static td_pipeline pl;
    if (td_pipeline_load(p, slots, &pl) == TD_OK) return "";
    snprintf(out, sizeof out, "%s", td_error_message());
    td_error_clear();
    return out;
}

int main(void) {
    REQUIRE(mkdtemp(g_dir), "mkdtemp");

    /* kinds */
    static const struct {
        const char *json, *kind;
    } kinds[] = {{"{\"pipeline\": {}}", "pipeline"},
                 {"{\"prep\": {}}", "prep"},
                 {"{\"serve\": {}}", "serve"},
                 {"{\"finetune\": {}, \"data\": {}}", "finetune"},
                 {"{\"model\": {}}", "train"},
                 {"{\"data\": {}}", NULL},
                 {"[1]", NULL}};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        cJSON *d = cJSON_Parse(kinds[i].json);
        const char *k = td_stage_kind(d);
        CHECK((k && kinds[i].kind && !strcmp(k, kinds[i].kind)) || (!k && !kinds[i].kind),
              "%s: kind %s", kinds[i].json, k ? k : "(none)");
        cJSON_Delete(d);
    }

    /* command lines */
    const char *got =
        argv_of("prep",
                "{\"prep\": {\"inputs\": [\"a.txt\", \"-odd\"], \"out\": \"data\", "
                "\"delimiter\": \"%\", \"vocab_size\": 512, \"val_fraction\": 0.05, "
                "\"no_nfc\": true, \"chat\": false, \"special\": [\"<a>\", \"<b>\"]}}",
                0);
    CHECK(!strcmp(got, "prep --out data --delimiter % --no-nfc --vocab-size 512 --special <a> "
                       "--special <b> --val-fraction 0.05 -- a.txt -odd"),
          "prep argv: %s", got);
    got = argv_of("serve",
                  "{\"serve\": {\"model\": \"runs/x/step_00000040\", \"adapters\": {\"rev\": "
                  "\"runs/l/step_00000020\"}, \"max_seqs\": 4, \"bf16\": true}}",
                  0);
    CHECK(!strcmp(got, "serve --name x --router tcp://127.0.0.1:5581 --insecure --model "
                       "runs/x/step_00000040 --adapter rev=runs/l/step_00000020 --max-seqs 4 "
                       "--bf16"),
          "serve argv: %s", got);
    got = argv_of("train", "{\"model\": {}}", 1);
    CHECK(!strcmp(got, "train /s/job.json --resume"), "train argv: %s", got);
    got = argv_of("prep", "{\"prep\": {\"out\": \"d\", \"inputs\": [\"x\"], \"vocab\": 5}}", 0);
    CHECK(strstr(got, "prep.vocab is not an option of tandem prep") && strstr(got, "vocab_size"),
          "unknown key: %s", got);
    got = argv_of("prep", "{\"prep\": {\"out\": \"d\"}}", 0);
    CHECK(strstr(got, "prep.inputs is required"), "missing inputs: %s", got);
    got = argv_of("serve", "{\"serve\": {\"model\": 5}}", 0);
    CHECK(strstr(got, "serve.model must be a string"), "wrong type: %s", got);
    got = argv_of("serve", "{\"serve\": {\"model\": \"m\", \"adapters\": {\"a=b\": \"d\"}}}", 0);
    CHECK(strstr(got, "serve.adapters must be"), "adapter name with '=': %s", got);
    got = argv_of("distill", "{\"distill\": {}}", 0);
    CHECK(strstr(got, "does not run distill jobs"), "distill: %s", got);
    got = argv_of("prep", "{\"prep\": {\"out\": \"d\", \"inputs\": [\"x\"]}, \"serve\": {}}", 0);
    CHECK(strstr(got, "more than one command section"), "two sections: %s", got);
    /* no cap on the arguments: 300 inputs give 300 paths */
    {
        char big[8000] = "{\"prep\": {\"out\": \"d\", \"inputs\": [";
        for (int i = 0; i < 300; i++) {
            size_t l = strlen(big);
            snprintf(big + l, sizeof big - l, "%s\"f%d\"", i ? ", " : "", i);
        }
        strcat(big, "]}}");
        got = argv_of("prep", big, 0);
        CHECK(!strncmp(got, "prep --out d -- f0 f1 ", 22) && strstr(got, " f299") &&
                  !strstr(got, "error"),
              "300 inputs: %.80s", got);
    }

    /* inputs a stage takes, and from what */
    static const struct {
        const char *kind, *key, *from;
        int ok;
    } ins[] = {{"train", "data.train", "prep", 1},
               {"train", "data.trian", "prep", 0},
               {"train", "data.train", "train", 0},
               {"finetune", "finetune.base", "train", 1},
               {"finetune", "finetune.base", "prep", 0},
               {"serve", "serve.model", "finetune", 1},
               {"serve", "serve.adapters.rev", "finetune", 1},
               {"serve", "serve.adapters.rev", "train", 0},
               {"serve", "serve.adapters.", "finetune", 0},
               {"serve", "serve.adapters.a.b", "finetune", 0},
               {"prep", "prep.out", "prep", 0},
               {"prep", "prep.tokenizer", "train", 1},
               {"prep", "serve.model", "train", 0}};
    for (size_t i = 0; i < sizeof ins / sizeof *ins; i++) {
        td_status st = td_stage_check_input(ins[i].kind, ins[i].key, ins[i].from);
        CHECK((st == TD_OK) == ins[i].ok, "%s input %s from %s: %s", ins[i].kind, ins[i].key,
              ins[i].from, st == TD_OK ? "accepted" : td_error_message());
        if (!ins[i].ok)
            printf("input %-18s of %-8s from %-8s -> %s\n", ins[i].key, ins[i].kind, ins[i].from,
                   td_error_message());
        td_error_clear();
    }

    /* dotted inputs */
    cJSON *doc = cJSON_Parse("{\"serve\": {\"model\": \"old\"}, \"data\": 3}");
    CHECK(td_stage_set(doc, "serve.model", "/new") == TD_OK, "set serve.model");
    CHECK(td_stage_set(doc, "serve.adapters.rev", "/ad") == TD_OK, "set a new nested key");
    CHECK(td_stage_set(doc, "data.train", "/x") != TD_OK, "a key across a number is refused");
    td_error_clear();
    char *text = cJSON_PrintUnformatted(doc);
    CHECK(
        !strcmp(text, "{\"serve\":{\"model\":\"/new\",\"adapters\":{\"rev\":\"/ad\"}},\"data\":3}"),
        "after the sets: %s", text);
    free(text);
    char names[256];
    td_stage_serve_names(doc, names, sizeof names);
    CHECK(!strcmp(names, "new,rev"), "names %s", names);
    cJSON_Delete(doc);
    doc = cJSON_Parse("{\"serve\": {\"model\": \"/r/base/step_00000040/\", \"name\": null}}");
    td_stage_serve_names(doc, names, sizeof names);
    CHECK(!strcmp(names, "base"), "a step directory's parent names it: %s", names);
    cJSON_Delete(doc);

    /* outputs */
    char out[2048], p[300];
    doc = cJSON_Parse("{\"model\": {}, \"checkpoint\": {\"dir\": \"run\"}}");
    CHECK(td_stage_output("train", doc, g_dir, out, sizeof out) != TD_OK,
          "no checkpoint yet: an error");
    td_error_clear();
    const char *steps[] = {"run",
                           "run/step_00000020",
                           "run/step_00000100",
                           "run/step_00000040",
                           "run/.tmp-step_00000200-1",
                           "run/step_x"};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, steps[i]);
        mkdir(p, 0755);
    }
    CHECK(td_stage_output("train", doc, g_dir, out, sizeof out) == TD_OK &&
              !strcmp(strrchr(out, '/'), "/step_00000100") && !strncmp(out, g_dir, strlen(g_dir)),
          "newest checkpoint: %s", out);
    cJSON_Delete(doc);
    doc = cJSON_Parse("{\"prep\": {\"out\": \"/abs/data\"}}");
    CHECK(td_stage_output("prep", doc, g_dir, out, sizeof out) == TD_OK &&
              !strcmp(out, "/abs/data"),
          "prep output %s", out);
    cJSON_Delete(doc);

    /* pipelines */
    put("prep.json", "{\"prep\": {\"inputs\": [\"x\"], \"out\": \"d\"}}");
    put("train.json", "{\"model\": {}, \"checkpoint\": {\"dir\": \"r\"}}");
    put("serve.json", "{\"serve\": {\"model\": \"m\"}}");
    put("ok.json", "{\"pipeline\": {\"name\": \"p\", \"stages\": ["
                   "{\"name\": \"prep\", \"job\": \"prep.json\"},"
                   "{\"name\": \"train\", \"job\": \"train.json\", \"ranks\": 2, "
                   " \"inputs\": {\"data.train\": \"prep\"}},"
                   "{\"name\": \"serve\", \"job\": \"serve.json\", \"after\": [\"prep\"],"
                   " \"inputs\": {\"serve.model\": \"train\"}}]}}");
    static td_pipeline pl;
    snprintf(p, sizeof p, "%s/ok.json", g_dir);
    CHECK(td_pipeline_load(p, 2, &pl) == TD_OK, "ok.json: %s", td_error_message());
    CHECK(pl.n == 3 && !strcmp(pl.stage[1].kind, "train") && pl.stage[1].ranks == 2 &&
              pl.stage[1].n_after == 1 && pl.stage[1].after[0] == 0 && pl.stage[2].n_after == 2 &&
              pl.stage[2].n_inputs == 1 && pl.stage[2].input_from[0] == 1 &&
              !strcmp(pl.stage[2].input_key[0], "serve.model") &&
              !strncmp(pl.stage[0].job, g_dir, strlen(g_dir)),
          "ok.json parsed wrong");
    CHECK(strstr(load_error("ok.json", 1), "ranks 2; the pool has 1 slots"), "ranks > slots: %s",
          load_error("ok.json", 1));
    static const struct {
        const char *name, *json, *want;
    } bad[] = {
        {"later.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"train.json\", "
         "\"inputs\": {\"data.train\": \"b\"}}, {\"name\": \"b\", \"job\": \"prep.json\"}]}}",
         "not the name of an earlier stage"},
        {"dup.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\"},"
         " {\"name\": \"a\", \"job\": \"prep.json\"}]}}",
         "a stage of this name comes earlier"},
        {"fromserve.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"s\", \"job\": \"serve.json\"},"
         " {\"name\": \"t\", \"job\": \"train.json\", \"inputs\": {\"x\": \"s\"}}]}}",
         "hands nothing on"},
        {"afterserve.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"s\", \"job\": \"serve.json\"},"
         " {\"name\": \"t\", \"job\": \"train.json\", \"after\": [\"s\"]}]}}",
         "nothing can follow it"},
        {"nested.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"n\", \"job\": \"ok.json\"}]}}",
         "is not a job file"},
        {"missing.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"n\", \"job\": "
         "\"nope.json\"}]}}",
         "nope.json"},
        {"badname.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a b\", \"job\": "
         "\"prep.json\"}]}}",
         "letters, digits"},
        {"typo.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\", "
         "\"input\": {}}]}}",
         "input"},
        {"empty.json", "{\"pipeline\": {\"name\": \"p\", \"stages\": []}}", "a list of 1 to"},
        {"badkey.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\"},"
         " {\"name\": \"t\", \"job\": \"train.json\", \"inputs\": {\"data.nosuch\": \"a\"}}]}}",
         "data.nosuch is not an input of a train stage"},
        {"overwrite.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\"},"
         " {\"name\": \"b\", \"job\": \"prep.json\", \"inputs\": {\"prep.out\": \"a\"}}]}}",
         "prep.out is not an input of a prep stage"},
        {"servefromprep.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\"},"
         " {\"name\": \"s\", \"job\": \"serve.json\", \"inputs\": {\"serve.model\": \"a\"}}]}}",
         "serve.model takes a checkpoint (from a train or finetune stage), not a prep stage"},
        {"pname.json",
         "{\"pipeline\": {\"name\": \"x y/z\", \"stages\": [{\"name\": \"a\", "
         "\"job\": \"prep.json\"}]}}",
         "pipeline.name \"x y/z\""},
        {"negranks.json",
         "{\"pipeline\": {\"name\": \"p\", \"stages\": [{\"name\": \"a\", \"job\": \"prep.json\", "
         "\"ranks\": -1}]}}",
         "ranks -1: at least 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        put(bad[i].name, bad[i].json);
        const char *e = load_error(bad[i].name, 4);
        CHECK(*e && strstr(e, bad[i].want), "%s: \"%s\", want \"%s\"", bad[i].name, e, bad[i].want);
        printf("%-16s -> %s\n", bad[i].name, e);
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return test_done("test_stages");
}
