#!/usr/bin/env bash
# compare.sh — one benchmark sitting: chordmail beside Postfix + Dovecot.
#
# Runs ROUNDS rounds; each round measures, one after the other (alternating, so that
# the load of a shared machine hits every system alike):
#   peers  Postfix SMTP :2526 (to durable Maildir delivery) + Dovecot POP3 :1111
#   one    chordmail, one node, --replicas 1, fresh --data
#   ring   chordmail, 3 node processes on this machine, --replicas 3 (W = 2), fresh
#          --data; SMTP and POP3 through the first node
# and, per system and round, on a fresh store:
#   1. SMTP  N msgs x SIZE B at concurrency 1           (peers/smtp-load.sh)
#   2. POP3  cold pass (first read, poplib, P sessions)  (peers/pop3-load.py, --expect N)
#   3. POP3  warm pass, poplib, P sessions
#   4. POP3  warm pass, --fast-retr, P sessions
#   5. POP3  pass with DELE (empties the mailboxes)
#   6. SMTP  N msgs x SIZE B at concurrency 16
# Server CPU of every step is taken exactly from the servers' process trees
# (tree-cpu.py: live processes + reaped children), so other processes on the
# machine are not counted. Results: $OUT/results.tsv and $OUT/summary.md (medians,
# ratios against the peers). Needs root (the peers), python3, curl, and a release build
# of chordmail; peers/peers-setup.sh installs Postfix (smtp-source), Dovecot and the
# rest with apt when they are missing.
#
# Env: ROUNDS [3] N [5000] SIZE [4096] K [100] P [8] SYSTEMS ["peers one ring"]
#      BIN [target-bench/release/chordmail] OUT [/tmp/cm-compare-<time>]
#      ONE_PORT [17301] RING_PORT [17311] (ring ports; SMTP +10000, POP3 +20000, admin
#      +3000, passed to the nodes explicitly)
# The nodes run as a real cluster would: mutual TLS on the ring port (a CA and node
# certificates made in $OUT) and the admin token on /api/*.
#      MAILPEERS_DIR [/tmp/mailpeers-ingest]  CM_RUST_LOG [unset = chordmail default, info]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH=${BENCH:-$HERE/peers}
ROUNDS=${ROUNDS:-3} N=${N:-5000} SIZE=${SIZE:-4096} K=${K:-100} P=${P:-8}
SYSTEMS=${SYSTEMS:-peers one ring}
BIN=${BIN:-$REPO/../target-bench/release/chordmail}
OUT=${OUT:-/tmp/cm-compare-$(date +%Y%m%d-%H%M%S)}
ONE_PORT=${ONE_PORT:-17301} RING_PORT=${RING_PORT:-17311}
export MAILPEERS_DIR=${MAILPEERS_DIR:-/tmp/mailpeers-ingest}
mkdir -p "$OUT"; RES=$OUT/results.tsv; LOG=$OUT/run.log
[ -s "$RES" ] || printf 'system\tround\tstep\tmsgs\tseconds\tmsg_per_s\tMB_per_s\tserver_cpu_s\tload1\n' > "$RES"
[ -x "$BIN" ] || { echo "compare: no chordmail binary at $BIN (cargo build --release -p chordmail)" >&2; exit 1; }
command -v curl >/dev/null || { echo "compare: needs curl (apt-get install curl)" >&2; exit 1; }

CM_PIDS=()
cleanup() {
  for pid in "${CM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${CM_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CM_PIDS=()
  "$BENCH/peers-stop.sh" >>"$LOG" 2>&1 || true
}
trap cleanup EXIT

say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# ---- servers --------------------------------------------------------------
ROOTS=() SMTP_PORT= POP3_PORT= WAIT=()
SMTP_OFFSET=10000 POP3_OFFSET=20000 HTTP_OFFSET=3000
wait_http() { for ((t = 0; t < 300; t++)); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
api() {  # api DATA CURL_ARGS...: an admin API call to the node of DATA, with its token if it has one
  local data=$1 auth=(); shift
  [ ! -s "$data/admin.token" ] || auth=(-H "Authorization: Bearer $(cat "$data/admin.token")")
  curl -fs "${auth[@]}" "$@"
}

start_peers() {
  "$BENCH/peers-setup.sh" --clean >>"$LOG" 2>&1 </dev/null
  ROOTS=("$(tr -d ' ' < "$MAILPEERS_DIR/postfix/spool/pid/master.pid")" "$(cat "$MAILPEERS_DIR/dovecot/run/master.pid")")
  SMTP_PORT=2526 POP3_PORT=1111 WAIT=(--wait-maildir "$MAILPEERS_DIR/maildirs")
}

CA_DIR=$OUT/ca
start_node() {  # start_node DATA PORT REPLICAS [ENTRY]
  local data=$1 port=$2 replicas=$3 entry=${4:-}
  [ -s "$CA_DIR/ca.key" ] || "$BIN" cert ca --dir "$CA_DIR" >>"$LOG"
  [ -s "$data.cert/node.key" ] || "$BIN" cert node --ca-dir "$CA_DIR" --addr "127.0.0.1:$port" --out "$data.cert" >>"$LOG"
  local args=(node --addr "127.0.0.1:$port" --smtp "127.0.0.1:$((port + SMTP_OFFSET))"
              --pop3 "127.0.0.1:$((port + POP3_OFFSET))" --http "127.0.0.1:$((port + HTTP_OFFSET))"
              --replicas "$replicas" --domain bench.test --data "$data"
              --cluster-ca "$CA_DIR/ca.crt" --cluster-cert "$data.cert/node.crt" --cluster-key "$data.cert/node.key")
  [ -z "$entry" ] || args+=(--entry-addr "$entry")
  mkdir -p "$data"
  if [ -n "${CM_RUST_LOG:-}" ]; then
    RUST_LOG=$CM_RUST_LOG "$BIN" "${args[@]}" >"$data.log" 2>&1 </dev/null &
  else
    "$BIN" "${args[@]}" >"$data.log" 2>&1 </dev/null &
  fi
  CM_PIDS+=($!); ROOTS+=($!)
  wait_http "http://127.0.0.1:$((port + HTTP_OFFSET))/healthz" || { echo "compare: node :$port did not come up" >&2; exit 1; }
}

add_users() {  # add_users DATA PORT: user0..user(K-1)@bench.test through the node of DATA, 4 at once
  local user pid pids=()
  for ((user = 0; user < K; user++)); do
    api "$1" -o /dev/null -X POST -H 'content-type: application/json' \
      -d "{\"address\":\"user$user@bench.test\",\"password\":\"pass\"}" "http://127.0.0.1:$(($2 + HTTP_OFFSET))/api/users" &
    pids+=($!)
    if [ ${#pids[@]} = 4 ] || [ $user = $((K - 1)) ]; then
      for pid in "${pids[@]}"; do wait "$pid" || { echo "compare: creating the users failed" >&2; exit 1; }; done
      pids=()
    fi
  done
}

start_one() {
  local d=$OUT/data/one-$1; rm -rf "$d"; ROOTS=()
  start_node "$d" "$ONE_PORT" 1
  add_users "$d" "$ONE_PORT"
  SMTP_PORT=$((ONE_PORT + SMTP_OFFSET)) POP3_PORT=$((ONE_PORT + POP3_OFFSET)) WAIT=()
}

start_ring() {
  local d=$OUT/data/ring-$1 i; rm -rf "$d"; ROOTS=()
  start_node "$d/a" "$RING_PORT" 3
  start_node "$d/b" $((RING_PORT + 1)) 3 "127.0.0.1:$RING_PORT"
  start_node "$d/c" $((RING_PORT + 2)) 3 "127.0.0.1:$RING_PORT"
  # wait until every node sees all three (the ring has stabilised)
  for ((i = 0; i < 600; i++)); do
    local ok=1 n
    for n in a:0 b:1 c:2; do
      [ "$(api "$d/${n%:*}" "http://127.0.0.1:$((RING_PORT + HTTP_OFFSET + ${n#*:}))/api/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null)" = 3 ] || ok=0
    done
    [ $ok = 1 ] && break; sleep 0.2
  done
  [ $ok = 1 ] || { echo "compare: ring did not converge" >&2; exit 1; }
  sleep 3   # a few more stabilisation rounds (successor lists, fingers)
  add_users "$d/a" "$RING_PORT"
  SMTP_PORT=$((RING_PORT + SMTP_OFFSET)) POP3_PORT=$((RING_PORT + POP3_OFFSET)) WAIT=()
}

stop_system() { cleanup; }

# ---- steps ----------------------------------------------------------------
cpu_now() { "$HERE/tree-cpu.py" "${ROOTS[@]}"; }
record() {  # record SYS ROUND STEP MSGS SECONDS MBPS CPU0 CPU1 LOAD
  awk -v s="$1" -v r="$2" -v st="$3" -v m="$4" -v t="$5" -v mb="$6" -v c0="$7" -v c1="$8" -v l="$9" \
    'BEGIN { printf "%s\t%s\t%s\t%d\t%.2f\t%.1f\t%s\t%.2f\t%s\n", s, r, st, m, t, m / t, mb, c1 - c0, l }' >> "$RES"
}
smtp_step() {  # smtp_step SYS ROUND CONC
  local tmp c0 c1 l key line; tmp=$(mktemp); l=$(load1); c0=$(cpu_now)
  "$BENCH/smtp-load.sh" -n "$N" -s "$SIZE" -c "$3" -k "$K" "${WAIT[@]}" 127.0.0.1 "$SMTP_PORT" >"$tmp" 2>&1 ||
    { cat "$tmp" >>"$LOG"; echo "compare: smtp $1 c=$3 failed" >&2; exit 1; }
  c1=$(cpu_now); cat "$tmp" >>"$LOG"
  key=smtp:; [ ${#WAIT[@]} = 0 ] || key=smtp-delivered:   # durable delivery for every system
  line=$(awk -v k="$key" '$1 == k' "$tmp"); rm -f "$tmp"
  say "$1 #$2 smtp c=$3: $line (server cpu $(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}') s, load $l)"
  record "$1" "$2" "smtp_c$3" "$N" "$(awk '{print $4}' <<<"$line")" - "$c0" "$c1" "$l"
}
pop_step() {  # pop_step SYS ROUND STEP ARGS...
  local sys=$1 r=$2 step=$3 tmp c0 c1 l line; shift 3; tmp=$(mktemp); l=$(load1); c0=$(cpu_now)
  "$BENCH/pop3-load.py" -k "$K" -p "$P" --expect "$N" "$@" 127.0.0.1 "$POP3_PORT" >"$tmp" 2>&1 ||
    { cat "$tmp" >>"$LOG"; echo "compare: pop3 $sys $step failed" >&2; exit 1; }
  c1=$(cpu_now); cat "$tmp" >>"$LOG"
  line=$(awk '$1 == "pop3:"' "$tmp"); rm -f "$tmp"
  say "$sys #$r pop3 $step: $line (server cpu $(awk -v a="$c0" -v b="$c1" 'BEGIN{print b-a}') s, load $l)"
  record "$sys" "$r" "$step" "$(awk '{print $2}' <<<"$line")" "$(awk '{print $6}' <<<"$line")" \
    "$(awk '{print $10}' <<<"$line")" "$c0" "$c1" "$l"
}

say "compare: $(nproc) CPUs, $(uname -r), rounds=$ROUNDS n=$N size=$SIZE k=$K p=$P systems='$SYSTEMS' out=$OUT"
for ((r = 1; r <= ROUNDS; r++)); do
  for sys in $SYSTEMS; do
    say "== round $r: $sys (load $(load1))"
    case $sys in peers) start_peers ;; one) start_one "$r" ;; ring) start_ring "$r" ;; esac
    smtp_step "$sys" "$r" 1
    pop_step "$sys" "$r" pop_cold
    pop_step "$sys" "$r" pop_warm_poplib
    pop_step "$sys" "$r" pop_warm_fast --fast-retr
    pop_step "$sys" "$r" pop_dele --dele
    smtp_step "$sys" "$r" 16
    stop_system
  done
done
python3 "$HERE/summarize.py" "$RES" | tee "$OUT/summary.md"
