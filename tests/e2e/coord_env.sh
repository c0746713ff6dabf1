# Sourced by the coordinator's e2e scripts (after HERE and TANDEM are set): a fresh working
# directory W (removed, with every process under it, on exit), MPI on one machine, the
# tests' own key directory, random ports for the control socket ($TANDEM_COORDINATOR), the
# replicas' endpoint ($REPLICAS) and the gateway ($HTTP), fail=0, and
#   start_coord LOG [OPTIONS...]  a coordinator on ./state with 2 slots, its stderr in LOG;
#                                 returns once it answers (exits the test if it cannot)
#   need_openai                   sets PY to the venv's python with the openai client, or
#                                 exits the test saying how to install it
#   field ID NAME                 a field of job ID from `tandem ps --json`
#   state ID                      its state
#   wait_state ID STATE SECONDS   until job ID is in STATE; else prints the table and the
#                                 jobs' logs, sets fail=1 and returns 1 (early when the job
#                                 ended in another state)
W=$(mktemp -d)
COORD=
cleanup() {
    [ -n "$COORD" ] && kill -9 "$COORD" 2> /dev/null || true
    pkill -9 -f "$W/" 2> /dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
cd "$W"
. "$HERE/mpi_env.sh"
export TANDEM_KEYS=$W/keys
# below Linux's ephemeral range (32768-60999), where an outgoing connection may hold a port
PORT=$((20000 + RANDOM % 12000))
export TANDEM_COORDINATOR=tcp://127.0.0.1:$PORT
REPLICAS=tcp://127.0.0.1:$((PORT + 1))
HTTP=$((PORT + 2))
fail=0
start_coord() { # log [options]
    local log=$1
    shift
    "$TANDEM" coordinator --state state --slots 2 --replicas "$REPLICAS" "$@" 2>> "$log" &
    COORD=$!
    for _ in $(seq 100); do
        kill -0 "$COORD" 2> /dev/null || { echo "FAIL: the coordinator exited"; cat "$log"; exit 1; }
        "$TANDEM" ps > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "FAIL: the coordinator did not answer"; cat "$log"; exit 1
}
field() { # id name
    "$TANDEM" ps --json | python3 -c "import json,sys; print(next(j.get('$2') for j in json.load(sys.stdin) if j['id']==$1))"
}
state() { field "$1" state; }
wait_state() { # id state seconds
    local s
    for _ in $(seq $(($3 * 5))); do
        s=$(state "$1")
        [ "$s" = "$2" ] && return 0
        case "$s" in done|failed|cancelled) break ;; esac
        sleep 0.2
    done
    echo "FAIL: job $1 is $(state "$1"), not $2 after $3 s"
    "$TANDEM" ps
    for l in state/jobs/*/log; do echo "--- $l"; tail -n 15 "$l"; done
    fail=1
    return 1
}
need_openai() {
    PY="$HERE/../../.venv/bin/python"
    [ -x "$PY" ] && "$PY" -c 'import openai' 2> /dev/null || {
        echo "FAIL: the openai client is missing: run scripts/install-deps.sh --clients"
        exit 1
    }
}
