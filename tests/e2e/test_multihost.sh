#!/usr/bin/env bash
# Several hosts on one machine (ctest label multihost; exits 77, skipped, where network
# namespaces cannot be made, saying why): scripts/netns-hosts.sh makes three hosts
# (tdhost1..3, 10.77.0.1..3, their own hostnames, a private bridge), and
#   1. a 3-rank data-parallel training job launched by mpirun on tdhost1 with one rank per
#      host (TCP between them, no shared memory) equals the same job as 3 ranks on one host
#      (loss within 1e-5 relative at each of 20 steps)
#   2. a tensor-parallel replica spanning tdhost1 and tdhost2 (TP 2, mpirun across them)
#      gives tokens identical to TP 1
#   3. the gateway (serve --http 0.0.0.0:PORT) on tdhost1 answers a client on tdhost3 by
#      name, and `ss -ltn` on tdhost1 shows the gateway not bound to loopback only
#   4. the coordinator on tdhost1 (control socket, router, gateway on 0.0.0.0), a replica on
#      tdhost2 that registers with its router as tcp://tdhost1:PORT, a client on tdhost3:
#      a completion through the gateway, and `tandem ps` from tdhost3
#   5. a second replica on tdhost3; tdhost2's link taken down: its replica is lost within
#      5 s and requests are served by tdhost3's
# Usage: test_multihost.sh TANDEM_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TANDEM=$(realpath "$1")
HOSTS="$HERE/../../scripts/netns-hosts.sh"
if ! why=$("$HOSTS" check 2>&1); then
    echo "skipped: $why"
    exit 77
fi
W=$(mktemp -d)
trap '"$HOSTS" down; rm -rf "$W"' EXIT
cd "$W"
. "$HERE/mpi_env.sh"
"$HOSTS" down
"$HOSTS" up 3
. "$HERE/tiny_model.sh"
tiny_model "$TANDEM" 64 # the data and a job shape; its run is not used
job() { # name
    cat > "$1.json" << JOB
{"model": {"arch": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 300,
           "max_position_embeddings": 64},
 "data": {"train": "$W/data", "seq_len": 32},
 "train": {"batch_size": 6, "steps": 20, "lr": 3e-3, "seed": 2},
 "checkpoint": {"dir": "$W/$1", "every": 20, "keep": 1}, "device": "cpu"}
JOB
}
losses() { grep '"loss"' "$1/metrics.jsonl" | sed 's/.*"loss": \([0-9.]*\).*/\1/'; }
fail=0
printf 'tdhost1 slots=1\ntdhost2 slots=1\ntdhost3 slots=1\n' > hostfile
# one host, 3 ranks over shared memory
job one && mpirun -np 3 "$TANDEM" train one.json --quiet 2> /dev/null
# three hosts, a rank each, over TCP on the bridge
job three
start=$(date +%s.%N)
"$HOSTS" run tdhost1 mpirun --hostfile "$W/hostfile" -np 3 \
    --mca plm_rsh_agent "$HOSTS rsh" --mca btl self,tcp \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM --wdir "$W" \
    "$TANDEM" train "$W/three.json" 2>&1 | grep -E "rank|hosts|^train:" | head -8 || true
echo "three hosts: $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
echo "3 ranks on one host  vs  3 hosts (one rank each):"
paste <(losses one) <(losses three) | awk 'NR % 5 == 1 { printf "   %4d  %s  %s\n", NR, $1, $2 }'
if ! paste <(losses one) <(losses three) |
    awk '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d; if (d > 1e-5 || NF != 2) bad++ }
         END { printf "   max relative difference %.2e over %d steps\n", m, NR
               exit (bad || NR != 20) ? 1 : 0 }'; then
    echo "FAIL: the three-host run differs"
    fail=1
fi

# 2. a tensor-parallel replica across two hosts: tokens identical to TP 1
CK=$W/three/step_00000020
awk 'BEGIN { RS = "%\n" } NR > 1 && NR <= 60 { split($0, l, "\n"); if (length(l[1]) > 8 && n < 8) { print substr(l[1], 1, 30); n++ } }' \
    /usr/share/games/fortunes/fortunes > prompts.txt
tokens() { sed 's/.*"tokens": \[\([^]]*\)\].*/\1/' "$1"; }
"$TANDEM" serve --model "$CK" --prompts-file prompts.txt --max-tokens 16 > tp1.jsonl 2> /dev/null
printf 'tdhost1 slots=1\ntdhost2 slots=1\n' > hostfile2
"$HOSTS" run tdhost1 mpirun --hostfile "$W/hostfile2" -np 2 \
    --mca plm_rsh_agent "$HOSTS rsh" --mca btl self,tcp \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM --wdir "$W" \
    "$TANDEM" serve --model "$CK" --tp 2 --prompts-file "$W/prompts.txt" --max-tokens 16 \
    > tp2.jsonl 2> tp2.err || true
if [ "$(wc -l < tp2.jsonl)" -eq 8 ] && cmp -s <(tokens tp1.jsonl) <(tokens tp2.jsonl); then
    echo "TP 2 across tdhost1 and tdhost2: 8 prompts, $(tokens tp1.jsonl | tr ',' '\n' | grep -c .) tokens, identical to TP 1"
else
    echo "FAIL: TP 2 across two hosts differs from TP 1"
    tail -3 tp2.err
    fail=1
fi

# 3. the gateway on tdhost1 serves a client on tdhost3; nothing another host must reach
#    is bound to loopback only
PORT=$((20000 + RANDOM % 20000))
"$HOSTS" run tdhost1 "$TANDEM" serve --model "$CK" --name tiny --http "0.0.0.0:$PORT" \
    2> gw.err &
GW=$!
ok=0
for _ in $(seq 100); do
    if "$HOSTS" run tdhost3 curl -s -m 2 "http://tdhost1:$PORT/health" 2> /dev/null |
        grep -q '"replicas":1'; then
        ok=1
        break
    fi
    sleep 0.2
done
REQ='{"model": "tiny", "prompt": "The", "max_tokens": 8, "temperature": 0}'
out=$("$HOSTS" run tdhost3 curl -s -m 20 "http://tdhost1:$PORT/v1/completions" \
    -H 'Content-Type: application/json' -d "$REQ" || true)
if [ $ok -eq 1 ] && grep -q '"text"' <<< "$out"; then
    echo "gateway on tdhost1, client on tdhost3: $(cut -c1-120 <<< "$out")"
else
    echo "FAIL: the client on tdhost3 got no completion from tdhost1: $out"
    tail -3 gw.err
    fail=1
fi
echo "listening sockets on tdhost1:"
"$HOSTS" run tdhost1 ss -ltnH | awk '{ print "   " $4 }'
if "$HOSTS" run tdhost1 ss -ltnH | awk '{ print $4 }' | grep -q "^127.0.0.1:$PORT$"; then
    echo "FAIL: the gateway is bound to loopback only"
    fail=1
fi
kill $GW 2> /dev/null || true
wait $GW 2> /dev/null || true

# 4. the coordinator (router and gateway) on tdhost1, a replica on tdhost2 registering with
#    it by name, a client on tdhost3 asking the gateway, and `tandem ps` from tdhost3
export TANDEM_KEYS=$W/keys
CP=$((PORT + 1))
RP=$((PORT + 2))
HP=$((PORT + 3))
"$HOSTS" run tdhost1 "$TANDEM" coordinator --state "$W/state" --slots 2 \
    --control "tcp://0.0.0.0:$CP" --replicas "tcp://0.0.0.0:$RP" --http "0.0.0.0:$HP" \
    2> coord.err &
COORD=$!
"$HOSTS" run tdhost2 "$TANDEM" serve --model "$CK" --name tiny --router "tcp://tdhost1:$RP" \
    2> replica.err &
REP=$!
ok=0
for _ in $(seq 150); do
    if "$HOSTS" run tdhost3 curl -s -m 2 "http://tdhost1:$HP/health" 2> /dev/null |
        grep -q '"replicas":1'; then
        ok=1
        break
    fi
    sleep 0.2
done
out=$("$HOSTS" run tdhost3 curl -s -m 20 "http://tdhost1:$HP/v1/completions" \
    -H 'Content-Type: application/json' -d "$REQ" || true)
if [ $ok -eq 1 ] && grep -q '"text"' <<< "$out"; then
    echo "coordinator on tdhost1, replica on tdhost2, client on tdhost3: $(cut -c1-100 <<< "$out")"
else
    echo "FAIL: no completion through the coordinator's gateway: $out"
    tail -3 coord.err replica.err
    fail=1
fi
if TANDEM_COORDINATOR="tcp://tdhost1:$CP" "$HOSTS" run tdhost3 "$TANDEM" ps > ps.txt 2>&1; then
    echo "tandem ps from tdhost3: $(head -1 ps.txt)"
else
    echo "FAIL: tandem ps from tdhost3: $(cat ps.txt)"
    fail=1
fi
echo "listening sockets on tdhost1 and tdhost2:"
for h in tdhost1 tdhost2; do "$HOSTS" run $h ss -ltnH | awk -v h=$h '{ print "   " h "  " $4 }'; done
for p in $CP $RP $HP; do
    if "$HOSTS" run tdhost1 ss -ltnH | awk '{ print $4 }' | grep -q "^127.0.0.1:$p$"; then
        echo "FAIL: port $p is bound to loopback only on tdhost1"
        fail=1
    fi
done

# 5. a second replica on tdhost3; tdhost2 cut off: the router marks its replica lost within
#    5 s and the requests go to tdhost3's
"$HOSTS" run tdhost3 "$TANDEM" serve --model "$CK" --name tiny --router "tcp://tdhost1:$RP" \
    2> replica3.err &
REP3=$!
health() { "$HOSTS" run tdhost3 curl -s -m 2 "http://tdhost1:$HP/health" 2> /dev/null || true; }
for _ in $(seq 150); do health | grep -q '"replicas":2' && break; sleep 0.2; done
if health | grep -q '"replicas":2'; then
    "$HOSTS" cut tdhost2
    t0=$(date +%s.%N)
    for _ in $(seq 100); do health | grep -q '"replicas":1' && break; sleep 0.1; done
    lost=$(awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    served=0
    for i in 1 2 3 4; do
        "$HOSTS" run tdhost3 curl -s -m 20 "http://tdhost1:$HP/v1/completions" \
            -H 'Content-Type: application/json' -d "$REQ" | grep -q '"text"' && served=$((served + 1))
    done
    echo "tdhost2 cut off: its replica lost after $lost s; $served of 4 requests served by tdhost3's"
    if ! awk -v l="$lost" 'BEGIN { exit !(l <= 5) }' || [ $served -ne 4 ]; then
        echo "FAIL: not lost within 5 s, or requests failed"
        fail=1
    fi
    "$HOSTS" mend tdhost2
else
    echo "FAIL: the second replica did not register: $(health)"
    tail -3 replica3.err
    fail=1
fi
kill $REP $REP3 $COORD 2> /dev/null || true
wait $REP $REP3 $COORD 2> /dev/null || true
exit $fail
