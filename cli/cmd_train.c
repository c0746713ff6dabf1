/* `tandem train JOB.json [--resume] [--stop-at STEP]`, alone or under mpirun. */
#include <getopt.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"
#include "worker/backend/backend.h"
#include "worker/comm/comm.h"
#include "worker/kernels/cpu/blas_core.h"
#include "worker/model/model.h"
#include "worker/train/trainer.h"

static void help(FILE *f) {
    fprintf(f, "usage: tandem train JOB.json [--resume] [--stop-at STEP] [--quiet]\n"
               "\n"
               "Trains the model the job file describes (alone, or data-parallel under mpirun) and "
               "writes\n"
               "checkpoints and metrics.jsonl to checkpoint.dir. See docs/train.md.\n"
               "\n"
               "  --resume         continue from the newest complete checkpoint in checkpoint.dir\n"
               "  --stop-at STEP   stop after STEP (saving a checkpoint); the LR schedule still\n"
               "                   follows train.steps, so a later --resume continues exactly\n"
               "  --bucket-mb N    gradient all-reduce bucket size in MiB (default 25)\n"
               "  --serve          after the last step, regroup the same ranks into tensor-\n"
               "                   parallel replicas and serve from the weights in memory;\n"
               "                   with --tp T, --prompts-file F, --max-tokens N (see\n"
               "                   tandem serve --help)\n"
               "  --quiet          print only errors and warnings\n"
               "  --no-verify      resume without checking the checkpoint's files against\n"
               "                   its SHA256SUMS\n"
               "  --verify-data    check every shard's sha256 against manifest.json (sizes,\n"
               "                   the listing and the tokenizer's sha256 are always checked)\n"
               "  -h, --help       this text\n");
}

/* SIGTERM (a scheduler's stop), SIGUSR1 (Slurm's warning before a time limit; mpirun
 * forwards it) and SIGINT: finish the step, save it, exit 0. A second one ends at once. */
static volatile int g_stop;

static void on_stop_signal(int sig) {
    g_stop = sig;
    signal(sig, SIG_DFL);
}

static void watch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

static void help_finetune(FILE *f) {
    fprintf(f, "usage: tandem finetune JOB.json [--resume] [--stop-at STEP] [--quiet]\n"
               "\n"
               "Fine-tunes a checkpoint on conversations: the job's \"finetune\" block names the\n"
               "base checkpoint (its weights, tokenizer and chat template; no optimizer state\n"
               "needed) and the method, full or lora; data.train is JSON Lines of\n"
               "{\"messages\": [...]} or {\"prompt\", \"completion\"}. The loss counts the\n"
               "assistant's tokens only. Alone or data-parallel under mpirun, like train.\n"
               "A LoRA run writes PEFT adapters (adapter_config.json, adapter_model.safetensors)\n"
               "to its checkpoints; tandem merge folds one into a full checkpoint. See\n"
               "docs/finetune.md.\n"
               "\n"
               "  --resume         continue from the newest complete checkpoint in checkpoint.dir\n"
               "  --stop-at STEP   stop after STEP (saving a checkpoint)\n"
               "  --quiet          print only errors and warnings\n"
               "  --no-verify      do not check the base's (or the resumed checkpoint's) files\n"
               "                   against its SHA256SUMS\n"
               "  -h, --help       this text\n");
}

static void help_distill(FILE *f) {
    fprintf(f,
            "usage: tandem distill JOB.json [--resume] [--stop-at STEP] [--quiet]\n"
            "\n"
            "Trains a student to match a teacher's output distribution (logit distillation):\n"
            "the job's \"distill\" block names the teacher checkpoint (frozen, forward only)\n"
            "and the loss, alpha * CE(data) + (1 - alpha) * tau^2 * KL; the rest of the job\n"
            "is a train job (a \"model\" block: the student from scratch, on token shards)\n"
            "or a finetune job (a \"finetune\" block: the student from a checkpoint, on\n"
            "conversations). Teacher and student need the same tokenizer. Alone or data-\n"
            "parallel under mpirun (the teacher runs on every rank beside the student).\n"
            "CPU only for now. See docs/distill.md.\n"
            "\n"
            "  distill block: teacher DIR (required), alpha (0.5), tau (2), kl forward|reverse\n"
            "                 (forward), topk K (0: all logits), teacher_precision fp32|bf16\n"
            "\n"
            "  --resume         continue from the newest complete checkpoint in checkpoint.dir\n"
            "  --stop-at STEP   stop after STEP (saving a checkpoint)\n"
            "  --quiet          print only errors and warnings\n"
            "  --no-verify      do not check the teacher's (base's, resumed checkpoint's) files\n"
            "                   against their SHA256SUMS\n"
            "  -h, --help       this text\n");
}

static int run(int argc, char **argv, int mode);

int td_cmd_train(int argc, char **argv) {
    return run(argc, argv, 0);
}

int td_cmd_finetune(int argc, char **argv) {
    return run(argc, argv, 1);
}

int td_cmd_distill(int argc, char **argv) {
    return run(argc, argv, 2);
}

static int run(int argc, char **argv, int mode) {
    static const char *const names[] = {"train", "finetune", "distill"};
    static void (*const helps[])(FILE *) = {help, help_finetune, help_distill};
    const char *name = names[mode];
    int finetune = mode == 1;
    static const struct option opts[] = {{"resume", no_argument, 0, 'r'},
                                         {"stop-at", required_argument, 0, 's'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"no-verify", no_argument, 0, 'V'},
                                         {"verify-data", no_argument, 0, 'D'},
                                         {"bucket-mb", required_argument, 0, 'b'},
                                         {"serve", no_argument, 0, 'S'},
                                         {"tp", required_argument, 0, 'T'},
                                         {"prompts-file", required_argument, 0, 'P'},
                                         {"max-tokens", required_argument, 0, 'M'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    td_train_opts o = {0};
    int serve = 0;
    const char *serve_args[8] = {"serve"};
    int nsa = 1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.resume = 1;
            break;
        case 's': {
            char *end;
            o.stop_at = strtol(optarg, &end, 10);
            if (*end || o.stop_at <= 0) {
                fprintf(stderr, "tandem %s: --stop-at needs a positive step, got '%s'\n", name,
                        optarg);
                return 2;
            }
            break;
        }
        case 'q':
            o.quiet = 1;
            break;
        case 'V':
            o.no_verify = 1;
            break;
        case 'D':
            o.verify_data = 1;
            break;
        case 'S':
            serve = 1;
            break;
        case 'T':
        case 'P':
        case 'M':
            if (nsa + 2 > 7) break;
            serve_args[nsa++] = c == 'T' ? "--tp" : c == 'P' ? "--prompts-file" : "--max-tokens";
            serve_args[nsa++] = optarg;
            break;
        case 'b': {
            char *end;
            double mb = strtod(optarg, &end);
            if (*end || end == optarg || mb <= 0 || mb > 4096) {
                fprintf(stderr, "tandem train: --bucket-mb needs a size in MiB, got '%s'\n",
                        optarg);
                return 2;
            }
            o.bucket_bytes = (size_t)(mb * 1048576.0);
            break;
        }
        case 'h':
            helps[mode](stdout);
            return 0;
        default:
            helps[mode](stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tandem %s: expected exactly one job file\n", name);
        helps[mode](stderr);
        return 2;
    }
    if (mode == 2 && serve) {
        fprintf(stderr, "tandem distill: --serve is not built for distillation; serve the "
                        "student's checkpoint afterwards\n");
        return 2;
    }
    if (finetune && serve) {
        fprintf(stderr, "tandem finetune: --serve is not built for fine-tuning; serve the "
                        "checkpoint (or the base with --adapter) afterwards\n");
        return 2;
    }
    int has_prompts = 0, tp = 1;
    for (int i = 1; i + 1 < nsa; i += 2) {
        if (!strcmp(serve_args[i], "--prompts-file")) has_prompts = 1;
        if (!strcmp(serve_args[i], "--tp")) tp = atoi(serve_args[i + 1]);
    }
    if (serve && (!has_prompts || tp < 1)) { /* say it now, not after training */
        fprintf(stderr, "tandem train: --serve needs --prompts-file F (and --tp >= 1)\n");
        return 2;
    }
    if (!serve && nsa > 1) {
        fprintf(stderr, "tandem train: --tp, --prompts-file and --max-tokens go with --serve\n");
        return 2;
    }
    td_job job;
    td_status s = td_job_load(argv[optind], &job);
    if (s != TD_OK) return td_cli_fail_same_on_all_ranks(name, s);
    if (mode == 2 && !job.teacher[0]) {
        fprintf(stderr,
                "tandem distill: error: %s has no \"distill\" block (teacher, alpha, tau, kl, "
                "topk)\n",
                argv[optind]);
        td_job_deinit(&job);
        return 2;
    }
    if (mode != 2 && job.teacher[0]) {
        fprintf(stderr,
                "tandem %s: error: %s has a \"distill\" block: run it with tandem distill\n", name,
                argv[optind]);
        td_job_deinit(&job);
        return 2;
    }
    if (mode != 2 && finetune != (job.base[0] != 0)) {
        fprintf(stderr,
                finetune ? "tandem finetune: error: %s has no \"finetune\" block (base, method); "
                           "to pretrain, use tandem train\n"
                         : "tandem train: error: %s has a \"finetune\" block: run it with "
                           "tandem finetune\n",
                argv[optind]);
        td_job_deinit(&job);
        return 2;
    }
    if (mode == 2 && !strcmp(job.device, "cuda")) {
        fprintf(stderr,
                "tandem distill: error: %s: distillation runs on the CPU for now (the KL's op "
                "has no GPU kernel yet); use device \"cpu\" or \"auto\"\n",
                argv[optind]);
        td_job_deinit(&job);
        return 2;
    }
    if (job.lora && !strcmp(job.device, "cuda")) {
        fprintf(stderr,
                "tandem finetune: error: %s: LoRA training runs on the CPU for now; use device "
                "\"cpu\" or \"auto\"\n",
                argv[optind]);
        td_job_deinit(&job);
        return 2;
    }
    /* device: cpu; cuda (this rank's GPU; an error saying why where none is usable);
     * auto: the GPU when one is usable, else the CPU with one line saying why */
    char why[256] = "no usable GPU: this build has no CUDA backend (TANDEM_CUDA=OFF)";
    int say_cpu = 0; /* device auto without a GPU: said once, by rank 0, below */
    if ((job.lora || mode == 2) && !strcmp(job.device, "auto")) { /* CPU only, said below */
        snprintf(why, sizeof why, "%s runs on the CPU for now",
                 mode == 2 ? "distillation" : "LoRA training");
        snprintf(job.device, sizeof job.device, "cpu");
        say_cpu = 1;
    }
    if (strcmp(job.device, "cpu")) {
        char err[200] = "";
        int ngpu = td_backend_devices("cuda", err, sizeof err);
        if (ngpu == 0) snprintf(why, sizeof why, "no usable GPU: %s", err);
        int cuda = !strcmp(job.device, "cuda");
        if (ngpu > 0 && !cuda && job.zero) { /* auto: what the GPU path lacks stays on the CPU */
            snprintf(why, sizeof why, "train.zero 1 is CPU-only for now");
            ngpu = 0;
        }
        if (ngpu > 0) {
            o.device = "cuda";
        } else if (cuda) {
            td_job_deinit(&job);
            fprintf(stderr,
                    "tandem train: error: %s: device \"cuda\": %s; use \"cpu\" or "
                    "\"auto\"\n",
                    argv[optind], why);
            return 2;
        } else {
            say_cpu = 1;
        }
    }
    /* under mpirun: one MPI job, rank 0 leads; ranks on one node share its cores */
    int mpi = td_comm_mpi_init(&argc, &argv, 0);
    td_comm *comm = NULL;
    if (mpi) {
        s = td_comm_mpi_new(&comm);
        if (s != TD_OK) {
            td_job_deinit(&job);
            td_comm_mpi_finalize();
            return td_cli_fail(name, s);
        }
        td_log_set_rank(comm->rank);
        if (comm->rank != 0) td_log_set_level(TD_LOG_LVL_ERROR);
        if (serve && comm->size % tp != 0) {
            if (comm->rank == 0)
                fprintf(stderr, "tandem train: --tp %d must divide the %d ranks\n", tp, comm->size);
            td_comm_free(&comm);
            td_job_deinit(&job);
            td_comm_mpi_finalize();
            return 2;
        }
        if (!getenv("OMP_NUM_THREADS") && comm->local_size > 1) {
            long cpus = sysconf(_SC_NPROCESSORS_ONLN);
            int per = (int)(cpus / comm->local_size);
            omp_set_num_threads(per > 0 ? per : 1);
        }
    }
    o.comm = comm;
    if (!o.device) td_cli_log_kernels(comm, o.quiet);
    if (say_cpu) /* ranks other than 0 log errors only */
        TD_LOG_INFO("device auto: training on the CPU (%s)", why);
    if (o.device && !job.bf16)
        TD_LOG_INFO("device %s: matrix products on the GPU are bf16 with fp32 accumulation "
                    "(fp32 products are the CPU reference)",
                    job.device);
    td_model *trained = NULL;
    char *tok_json = NULL;
    if (serve) {
        o.keep_model = &trained;
        o.keep_tokenizer = &tok_json;
    }
    td_train_result r;
    watch_stop_signals();
    o.stop = &g_stop;
    s = td_train_run(&job, &o, &r);
    td_job_deinit(&job);
    int rc = 0;
    if (s != TD_OK) rc = td_cli_fail(name, s);
    td_comm_free(&comm);
    if (rc == 0 && serve && r.stopped) { /* stopped early: no serving */
        td_model_free(&trained);
        free(tok_json);
        serve = 0;
    }
    if (rc == 0 && serve) { /* same ranks, same weights in memory: serve them */
        rc = td_serve_main(nsa, (char **)serve_args, "train --serve", trained, tok_json);
        free(tok_json);
        return rc; /* td_serve_main finalized MPI */
    }
    if (mpi) {
        if (rc != 0) td_comm_mpi_abort(rc); /* peers may wait in a collective */
        td_comm_mpi_finalize();
    }
    return rc;
}
