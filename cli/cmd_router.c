/* `tandem router` and `tandem gateway`: the serving front door as separate processes
 * (docs/gateway.md). `tandem serve --http` runs both in-process instead. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/log.h"
#include "coordinator/gateway.h"
#include "coordinator/router.h"

static volatile int g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

void td_cli_catch_stop_signals(volatile int **flag) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    *flag = &g_stop;
}

static void router_help(FILE *f) {
    fprintf(f, "usage: tandem router [--front EP] [--back EP] [options]\n"
               "\n"
               "Routes generation requests from gateways (front) to serving replicas (back) over\n"
               "ZeroMQ: least-loaded live replica of the requested model, a bounded queue per\n"
               "model, heartbeats (a replica silent for 3 is lost and its requests fail at once).\n"
               "Replicas join with `tandem serve --model DIR --router BACK`. See docs/gateway.md.\n"
               "\n"
               "  --front EP            clients' endpoint (default tcp://127.0.0.1:5555)\n"
               "  --back EP             replicas' endpoint (default tcp://127.0.0.1:5556)\n"
               "  --queue-max N         requests waiting per model (default 256)\n"
               "  --queue-timeout S     longest wait in a queue, seconds (default 30)\n"
               "  --heartbeat-ms N      heartbeat interval (default 1000)\n"
               "  --insecure            plain text: no CURVE keys (anyone who reaches the ports\n"
               "                        can register replicas or send requests)\n"
               "\n"
               "Both sockets are CURVE servers: only replicas and gateways whose public key is in\n"
               "the key directory's allowed/ connect ($TANDEM_KEYS, else ~/.config/tandem/keys;\n"
               "made on first start with this host's key allowed). See docs/router.md.\n"
               "  -h, --help            this text\n");
}

int td_cmd_router(int argc, char **argv) {
    td_router_opts o = {.front = "tcp://127.0.0.1:5555",
                        .back = "tcp://127.0.0.1:5556",
                        .queue_max = 256,
                        .queue_timeout_s = 30,
                        .heartbeat_ms = 1000};
    static const struct option opts[] = {{"front", required_argument, 0, 'f'},
                                         {"back", required_argument, 0, 'b'},
                                         {"queue-max", required_argument, 0, 'q'},
                                         {"queue-timeout", required_argument, 0, 't'},
                                         {"heartbeat-ms", required_argument, 0, 'H'},
                                         {"insecure", no_argument, 0, 'I'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int c, bad = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1 && !bad) {
        char *end = NULL;
        switch (c) {
        case 'f':
            o.front = optarg;
            break;
        case 'b':
            o.back = optarg;
            break;
        case 'q':
            o.queue_max = (int)strtol(optarg, &end, 10);
            bad = o.queue_max < 1;
            break;
        case 't':
            o.queue_timeout_s = strtod(optarg, &end);
            bad = o.queue_timeout_s <= 0;
            break;
        case 'H':
            o.heartbeat_ms = (int)strtol(optarg, &end, 10);
            bad = o.heartbeat_ms < 10;
            break;
        case 'I':
            o.insecure = 1;
            break;
        case 'h':
            router_help(stdout);
            return 0;
        default:
            bad = 1;
        }
        if (end && *end) bad = 1;
        if (bad && optarg) fprintf(stderr, "tandem router: bad value '%s'\n", optarg);
    }
    if (bad || optind != argc) {
        router_help(stderr);
        return 2;
    }
    volatile int *stop;
    td_cli_catch_stop_signals(&stop);
    td_router *r;
    td_status s = td_router_new(&o, &r);
    if (s != TD_OK) return td_cli_fail("router", s);
    fprintf(stderr, "tandem router: front %s, back %s\n", td_router_front_endpoint(r),
            td_router_back_endpoint(r));
    s = td_router_run(r, stop);
    td_router_free(&r);
    return s == TD_OK ? 0 : td_cli_fail("router", s);
}

static void gateway_help(FILE *f) {
    fprintf(f,
            "usage: tandem gateway [--listen HOST:PORT] [--router EP] [options]\n"
            "\n"
            "HTTP front door: OpenAI (/v1/completions, /v1/chat/completions, /v1/models) and\n"
            "Ollama (/api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version)\n"
            "APIs, /health and /metrics (Prometheus). Requests go to `tandem router`.\n"
            "See docs/gateway.md.\n"
            "\n"
            "  --listen HOST:PORT    address to listen on (default 127.0.0.1:8080; port 0 =\n"
            "                        any free port, printed)\n"
            "  --router EP           the router's front endpoint (default tcp://127.0.0.1:5555)\n"
            "  --api-key KEY         require Authorization: Bearer KEY (repeatable; default:\n"
            "                        no key; also TANDEM_API_KEY)\n"
            "  --max-body BYTES      largest request body (default 1048576)\n"
            "  --timeout S           longest wait for a request's next answer (default 120)\n"
            "  --header-timeout S    close a connection silent this long before its request\n"
            "                        is complete, or between requests (default 10)\n"
            "  --max-connections N   open connections at most (default 4096)\n"
            "  --public-metrics      /metrics without a key (every route but /health needs\n"
            "                        one when keys are set)\n"
            "  --router-heartbeat-ms N  the router's --heartbeat-ms (default 1000): three\n"
            "                        missed end the requests it holds with an error\n"
            "  --insecure            plain text to the router (a router run with --insecure);\n"
            "                        by default CURVE with this host's client key\n"
            "  -h, --help            this text\n");
}

int td_cmd_gateway(int argc, char **argv) {
    td_gateway_opts o = {.listen = "127.0.0.1:8080",
                         .router = "tcp://127.0.0.1:5555",
                         .max_body = 1u << 20,
                         .timeout_s = 120};
    const char **keys = calloc((size_t)argc + 2, sizeof *keys);
    int nk = 0, c, bad = 0;
    static const struct option opts[] = {{"listen", required_argument, 0, 'l'},
                                         {"router", required_argument, 0, 'r'},
                                         {"api-key", required_argument, 0, 'k'},
                                         {"max-body", required_argument, 0, 'm'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"header-timeout", required_argument, 0, 'H'},
                                         {"max-connections", required_argument, 0, 'C'},
                                         {"public-metrics", no_argument, 0, 'P'},
                                         {"router-heartbeat-ms", required_argument, 0, 'B'},
                                         {"insecure", no_argument, 0, 'I'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1 && !bad) {
        char *end = NULL;
        switch (c) {
        case 'l':
            o.listen = optarg;
            break;
        case 'r':
            o.router = optarg;
            break;
        case 'k':
            keys[nk++] = optarg;
            bad = !optarg[0];
            break;
        case 'm':
            o.max_body = strtoull(optarg, &end, 10);
            bad = optarg[0] == '-' || o.max_body < 64 || o.max_body > (1ull << 30);
            break;
        case 't':
            o.timeout_s = strtod(optarg, &end);
            bad = o.timeout_s <= 0;
            break;
        case 'H':
            o.header_timeout_s = strtod(optarg, &end);
            bad = o.header_timeout_s < 1 || o.header_timeout_s > 3600;
            break;
        case 'C': {
            long v = strtol(optarg, &end, 10);
            bad = v < 16 || v > 1000000;
            o.max_connections = (unsigned)v;
            break;
        }
        case 'P':
            o.public_metrics = 1;
            break;
        case 'B':
            o.router_heartbeat_ms = (int)strtol(optarg, &end, 10);
            bad = o.router_heartbeat_ms < 10;
            break;
        case 'I':
            o.insecure = 1;
            break;
        case 'h':
            gateway_help(stdout);
            free(keys);
            return 0;
        default:
            bad = 1;
        }
        if (end && *end) bad = 1;
        if (bad && optarg) fprintf(stderr, "tandem gateway: bad value '%s'\n", optarg);
    }
    if (bad || optind != argc) {
        gateway_help(stderr);
        free(keys);
        return 2;
    }
    if (getenv("TANDEM_API_KEY") && getenv("TANDEM_API_KEY")[0])
        keys[nk++] = getenv("TANDEM_API_KEY");
    o.api_keys = nk ? keys : NULL;
    volatile int *stop;
    td_cli_catch_stop_signals(&stop);
    td_gateway *g;
    td_status s = td_gateway_new(&o, &g);
    if (s != TD_OK) {
        free(keys);
        return td_cli_fail("gateway", s);
    }
    fprintf(stderr, "tandem gateway: listening on port %d, router %s\n", td_gateway_port(g),
            o.router);
    while (!*stop)
        usleep(100000);
    td_gateway_free(&g);
    free(keys);
    return 0;
}
