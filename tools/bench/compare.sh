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
#   1. SMTP  N msgs x SIZE B at concurrency 1           (smtp-load.sh)
#   2. POP3  cold pass (first read, poplib, P sessions)  (pop3-load.py, --expect N)
#   3. POP3  warm pass, poplib, P sessions
#   4. POP3  warm pass, --fast-retr, P sessions
#   5. POP3  pass with DELE (empties the mailboxes)
#   6. SMTP  N msgs x SIZE B at concurrency 16
# Server CPU of every step is taken exactly from the servers' process trees
# (tree-cpu.py: live processes + reaped children), so other processes on the
# machine are not counted. Results: $OUT/results.tsv and $OUT/summary.md (medians,
# ratios against the peers). Needs root (the peers), Postfix's smtp-source, python3,
# curl, and a release build of chordmail.
#
# Env: ROUNDS [3] N [5000] SIZE [4096] K [100] P [8] SYSTEMS ["peers one ring"]
#      BIN [target-bench/release/chordmail] OUT [/tmp/cm-compare-<time>]
#      ONE_PORT [17301] RING_PORT [17311] (ring ports +10000 SMTP, +20000 POP3, +3000 admin)
# The nodes run as a real cluster would: mutual TLS on the ring port (a CA and node
# certificates made in $OUT) and the admin token on /api/*. CM_TLS=0 runs the ring
# port in plaintext instead (loopback only), to measure what TLS costs.
#      MAILPEERS_DIR [/tmp/mailpeers-ingest]  CM_RUST_LOG [unset = chordmail default, info]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH=${BENCH:-$REPO/../shared/bench}
ROUNDS=${ROUNDS:-3} N=${N:-5000} SIZE=${SIZE:-4096} K=${K:-100} P=${P:-8}
SYSTEMS=${SYSTEMS:-peers one ring}
BIN=${BIN:-$REPO/../target-bench/release/chordmail}
OUT=${OUT:-/tmp/cm-compare-$(date +%Y%m%d-%H%M%S)}
ONE_PORT=${ONE_PORT:-17301} RING_PORT=${RING_PORT:-17311}
export MAILPEERS_DIR=${MAILPEERS_DIR:-/tmp/mailpeers-ingest}
mkdir -p "$OUT"; RES=$OUT/results.tsv; LOG=$OUT/run.log
[ -s "$RES" ] || printf 'system\tround\tstep\tmsgs\tseconds\tmsg_per_s\tMB_per_s\tserver_cpu_s\tload1\n' > "$RES"
[ -x "$BIN" ] || { echo "compare: no chordmail binary at $BIN (cargo build --release -p chordmail)" >&2; exit 1; }

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
wait_http() { for ((t = 0; t < 300; t++)); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

start_peers() {
  "$BENCH/peers-setup.sh" --clean >>"$LOG" 2>&1 </dev/null
  ROOTS=("$(tr -d ' ' < "$MAILPEERS_DIR/postfix/spool/pid/master.pid")" "$(cat "$MAILPEERS_DIR/dovecot/run/master.pid")")
  SMTP_PORT=2526 POP3_PORT=1111 WAIT=(--wait-maildir "$MAILPEERS_DIR/maildirs")
}

TOKEN_FILE=$OUT/admin.token CA_DIR=$OUT/ca
make_trust() {  # one admin token and a cluster CA for every node of the sitting
  [ -s "$TOKEN_FILE" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TOKEN_FILE")
  [ -s "$CA_DIR/ca.key" ] || "$BIN" cert ca --dir "$CA_DIR" >>"$LOG"
}

start_node() {  # start_node DATA PORT REPLICAS [ENTRY]
  local data=$1 port=$2 replicas=$3 entry=${4:-}
  make_trust
  [ -s "$data.cert/node.key" ] || "$BIN" cert node --ca-dir "$CA_DIR" --addr "127.0.0.1:$port" --out "$data.cert" >>"$LOG"
  local args=(node --addr "127.0.0.1:$port" --replicas "$replicas" --domain bench.test --data "$data"
    --admin-token-file "$TOKEN_FILE")
  [ "${CM_TLS:-1}" = 0 ] || args+=(--cluster-ca "$CA_DIR/ca.crt"
    --cluster-cert "$data.cert/node.crt" --cluster-key "$data.cert/node.key")
  [ -z "$entry" ] || args+=(--entry-addr "$entry")
  mkdir -p "$data"
  if [ -n "${CM_RUST_LOG:-}" ]; then
    RUST_LOG=$CM_RUST_LOG "$BIN" "${args[@]}" >"$data.log" 2>&1 </dev/null &
  else
    "$BIN" "${args[@]}" >"$data.log" 2>&1 </dev/null &
  fi
  CM_PIDS+=($!); ROOTS+=($!)
  wait_http "http://127.0.0.1:$((port + 3000))/healthz" || { echo "compare: node :$port did not come up" >&2; exit 1; }
}

add_users() {  # add_users ADMIN_PORT
  seq 0 $((K - 1)) | xargs -P 4 -I{} curl -fs -o /dev/null -X POST -H 'content-type: application/json' \
    -H "authorization: Bearer $(cat "$TOKEN_FILE")" \
    -d '{"address":"user{}@bench.test","password":"pass"}' "http://127.0.0.1:$1/api/users"
}

start_one() {
  local d=$OUT/data/one-$1; rm -rf "$d"; ROOTS=()
  start_node "$d" "$ONE_PORT" 1
  add_users $((ONE_PORT + 3000))
  SMTP_PORT=$((ONE_PORT + 10000)) POP3_PORT=$((ONE_PORT + 20000)) WAIT=()
}

start_ring() {
  local d=$OUT/data/ring-$1 i; rm -rf "$d"; ROOTS=()
  start_node "$d/a" "$RING_PORT" 3
  start_node "$d/b" $((RING_PORT + 1)) 3 "127.0.0.1:$RING_PORT"
  start_node "$d/c" $((RING_PORT + 2)) 3 "127.0.0.1:$RING_PORT"
  # wait until every node sees all three (the ring has stabilised)
  for ((i = 0; i < 600; i++)); do
    local ok=1 n
    for n in 0 1 2; do
      [ "$(curl -fs -H "authorization: Bearer $(cat "$TOKEN_FILE")" "http://127.0.0.1:$((RING_PORT + 3000 + n))/api/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null)" = 3 ] || ok=0
    done
    [ $ok = 1 ] && break; sleep 0.2
  done
  [ $ok = 1 ] || { echo "compare: ring did not converge" >&2; exit 1; }
  sleep 3   # a few more stabilisation rounds (successor lists, fingers)
  add_users $((RING_PORT + 3000))
  SMTP_PORT=$((RING_PORT + 10000)) POP3_PORT=$((RING_PORT + 20000)) WAIT=()
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
