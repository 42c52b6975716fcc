#!/usr/bin/env bash
# Load benchmarks: builds release, runs the standard ringsync-load scenarios, each against a fresh
# server pinned to core 0 (one tokio worker) with the load generator on core 1, runs the criterion
# micro-benches, and writes docs/BENCHMARKS.md (machine, commands, median tables).
#
#   scripts/bench.sh                    # everything, about 12 minutes on 2 cores
#   RUNS=1 DURATION=4 scripts/bench.sh  # quicker and noisier
#   ONLY='fanout' scripts/bench.sh      # only the runs whose label matches (grep -E); the report then
#                                       # holds only those: pair it with DOC=/tmp/x.md OUT=/tmp/x
#                                       # (ONLY='fanout N|floor|redis' keeps the fan-out shapes with their
#                                       # floor and Redis runs)
#   FLOOR=0 scripts/bench.sh            # skip the floor runs (the fan-out shapes against
#                                       # `ringsync-load floor-server`, the × floor table)
#   REDIS=0 scripts/bench.sh            # skip the Redis runs (fan-out N=1000 and N=5000 at M=20 as
#                                       # `redis-fanout` against a fresh redis-server pinned like the
#                                       # server, the × redis table); skipped anyway without redis-server
#   CRITERION=0 scripts/bench.sh        # skip the criterion benches
#   PROFILE=1 scripts/bench.sh          # also perf-record the server under fan-out load
#   NOISE_MAX=0.1 RETRIES=2             # repeat a run when other processes took >10 % of a core
#   DOC=/tmp/b.md scripts/bench.sh      # write the report elsewhere
#   BASELINE=/tmp/old/ringsync scripts/bench.sh  # A/B: also run every scenario against another
#                                       # server binary, interleaved, labelled "(baseline)"
#                                       # (BASELINE_FLAGS='...' when it needs other server flags)
#   STORE=batch scripts/bench.sh          # servers with durable rooms (a fresh --data-dir each), not --memory-only
#
# Load stays on 127.0.0.1 and is bounded: at most 10,000 connections, every run time-limited.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ONLY=${ONLY:-}
CRITERION=${CRITERION:-1}
PROFILE=${PROFILE:-0}
FLOOR=${FLOOR:-1}
REDIS=${REDIS:-1}
NOISE_MAX=${NOISE_MAX:-0.1}
RETRIES=${RETRIES:-2}
OUT=${OUT:-target/bench}
DOC=${DOC:-docs/BENCHMARKS.md}
SERVER_CORE=0
LOAD_CORE=1
MARKER='<!-- Hand-written below this line: scripts/bench.sh keeps it when it rewrites the file. -->'

mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
: > "$OUT/rejected.jsonl"
: > "$OUT/server.log"

# The idle scenario holds 10,000 sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
IDLE_N=10000
if [ "$FDS" != unlimited ] && [ "$FDS" -lt $((IDLE_N + 200)) ]; then
    IDLE_N=$((FDS - 200))
    echo "note: ulimit -n is $FDS; the idle scenario uses $IDLE_N connections" >&2
fi

echo "==> cargo build --release"
# The load generator is its own workspace member (benches/ringsync-load); both land in target/release.
# (--bin filters every selected package, so each binary is named.)
cargo build --release -p ringsync --bin ringsync -p ringsync-load --bin ringsync-load
SERVER=${SERVER_BIN:-target/release/ringsync} # SERVER_BIN=path: measure another build instead
LOAD=target/release/ringsync-load
BASELINE=${BASELINE:-}
# Default flags, except the per-room client cap (default 5,000): the idle scenario holds 10,000
# clients in one room, and fanout N=5000 adds its writer to 5,000 readers; the per-connection change
# rate (default 200/s): the M=1000 scenarios send 1,000 changes/s from one client; and the per-IP
# connection limits (20/s, 1,000 open): every load-generator client comes from 127.0.0.1. The
# per-connection byte rate stays at its default, so its check is measured.
SERVER_FLAGS=(--max-room-clients 0 --rate-changes 0 --rate-ip-connections 0 --max-ip-connections 0)
# Rooms in memory (--memory-only), as every figure before durable rooms was measured; STORE=batch
# (or always, never) gives each server start a fresh data directory under $OUT with that --fsync
# (durable rooms' own figures: scripts/bench-durable.sh). Never the default ./ringsync-data.
STORE=${STORE:-memory}
if [ "$STORE" = memory ]; then SERVER_FLAGS+=(--memory-only); fi
# BASELINE_FLAGS='--max-room-clients 0': the baseline's flags instead (an older build may not know
# the newer ones).
if [ -n "${BASELINE_FLAGS+set}" ]; then read -r -a BASE_FLAGS <<<"$BASELINE_FLAGS"; else BASE_FLAGS=("${SERVER_FLAGS[@]}"); fi

if [ "$REDIS" = 1 ] && ! command -v redis-server >/dev/null; then
    echo "note: redis-server is not on PATH; no Redis runs (apt-get install redis-server)" >&2
    REDIS=0
fi

PIN=0
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN=1; fi
pinned() { # pinned CORE CMD... (execs, so the caller's $! is the command's pid)
    local core=$1
    shift
    if [ "$PIN" = 1 ]; then exec taskset -c "$core" "$@"; else exec "$@"; fi
}

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ -n "$DATA_DIR" ]; then rm -rf "$DATA_DIR"; DATA_DIR=""; fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

DATA_DIR=""
start_server() {
    : > "$OUT/server.out"
    local store_flags=()
    if [ "$STORE" != memory ]; then
        DATA_DIR=$(mktemp -d "$OUT/data.XXXXXX")
        store_flags=(--data-dir "$DATA_DIR" --fsync "$STORE")
    fi
    (RUST_LOG=warn TOKIO_WORKER_THREADS=1 pinned $SERVER_CORE "$SERVER" --listen 127.0.0.1:0 "${SERVER_FLAGS[@]}" "${store_flags[@]}" "$@" \
        > "$OUT/server.out" 2>> "$OUT/server.log") &
    SERVER_PID=$!
    wait_listening
}

# start_floor: the fan-out floor (`ringsync-load floor-server`: one pre-built frame, one write per
# reader socket, a current-thread runtime) in place of the server, pinned to the server's core.
start_floor() {
    : > "$OUT/server.out"
    (pinned $SERVER_CORE "$LOAD" floor-server --listen 127.0.0.1:0 > "$OUT/server.out" 2>> "$OUT/server.log") &
    SERVER_PID=$!
    wait_listening
}

# start_redis: a fresh redis-server in place of the server, pinned to the server's core, for
# `redis-fanout`: no persistence, its working directory a new one under $OUT (DATA_DIR, so
# stop_server removes it). redis-server cannot report a port the kernel picked (--port 0 turns TCP
# off), so the port is a random one nothing answers on, tried again elsewhere if redis-server
# still fails to bind it.
start_redis() {
    local port _
    for _ in $(seq 20); do
        port=$((20000 + RANDOM % 20000))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
        : > "$OUT/server.out"
        DATA_DIR=$(mktemp -d "$OUT/redis.XXXXXX")
        # Redirected outside the subshell: $OUT may be relative to where the script runs.
        (cd "$DATA_DIR" && pinned $SERVER_CORE redis-server --bind 127.0.0.1 --port "$port" --save '' \
            --appendonly no --daemonize no --logfile '') > "$OUT/server.out" 2>> "$OUT/server.log" &
        SERVER_PID=$!
        for _ in $(seq 100); do
            if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                ADDR=127.0.0.1:$port
                return 0
            fi
            sleep 0.05
        done
        cat "$OUT/server.out" >> "$OUT/server.log"
        stop_server
    done
    echo "redis-server did not start; its log:" >&2
    tail -n 20 "$OUT/server.log" >&2
    exit 1
}

# Sets ADDR from the "… listening on http://ADDR" line of the server just started.
wait_listening() {
    ADDR=""
    for _ in $(seq 200); do
        ADDR=$(sed -n 's#^.*listening on http://##p' "$OUT/server.out")
        [ -n "$ADDR" ] && return 0
        sleep 0.05
    done
    echo "the server did not start; its log:" >&2
    cat "$OUT/server.log" >&2
    exit 1
}

# run LABEL SCENARIO ARGS...: one run against a fresh server (started by $STARTER, start_server
# unless set). A run during which other processes used more than NOISE_MAX of a core (the machine
# is shared) is repeated, up to RETRIES times.
run() {
    local label=$1
    shift
    if [ -n "$ONLY" ] && ! grep -qE -- "$ONLY" <<< "$label"; then return 0; fi
    local attempt other
    for attempt in $(seq 0 "$RETRIES"); do
        "${STARTER:-start_server}"
        printf '%-36s ' "$label"
        : > "$OUT/run.jsonl"
        if ! (pinned $LOAD_CORE "$LOAD" --addr "$ADDR" --server-pid "$SERVER_PID" --label "$label" \
            --json "$OUT/run.jsonl" --duration "$DURATION" --warmup "$WARMUP" "$@") > "$OUT/last.txt" 2>&1; then
            echo "FAILED:"
            sed 's/^/    /' "$OUT/last.txt" | tail -n 20
            stop_server
            return 0
        fi
        stop_server
        other=$(sed -nE 's/.*"other_cpu_util":([0-9.e-]+).*/\1/p' "$OUT/run.jsonl")
        sed -E 's/.*"fast_delivered_per_s":([0-9.]+).*"lat_p99_ms":([0-9.]+).*"readers_not_at_final":([0-9]+).*"rss_peak_mb":([0-9.]+).*/fast delivered\/s \1  p99 \2 ms  not at final rev \3  peak RSS \4 MB/; t e
                s/.*"delivered_per_s":([0-9.]+).*"lat_p99_ms":([0-9.]+).*/delivered\/s \1  p99 \2 ms/; t e
                s/.*"presence_entries_per_s":([0-9.]+).*/entries\/s \1/; t e
                s/.*"converge_ms":([0-9.]+).*/converged in \1 ms/; t e
                s/.*"kib_per_conn":([0-9.]+).*/\1 KiB\/connection/; t e
                s/.*/done/; :e' "$OUT/run.jsonl" | tr -d '\n'
        echo "${other:+  (other CPU $other)}"
        if [ -n "$other" ] && [ "$attempt" -lt "$RETRIES" ] && awk -v o="$other" -v m="$NOISE_MAX" 'BEGIN { exit !(o > m) }'; then
            echo "    noisy: other processes used $other of a core; repeating"
            cat "$OUT/run.jsonl" >> "$OUT/rejected.jsonl"
            continue
        fi
        cat "$OUT/run.jsonl" >> "$RESULTS"
        return 0
    done
}

# run_ab LABEL SCENARIO ARGS...: run, and with BASELINE set the same against the baseline binary.
run_ab() {
    run "$@"
    if [ -n "$BASELINE" ]; then
        local label=$1 ours=$SERVER
        local our_flags=("${SERVER_FLAGS[@]}")
        shift
        SERVER=$BASELINE
        SERVER_FLAGS=("${BASE_FLAGS[@]}")
        run "$label (baseline)" "$@"
        SERVER=$ours
        SERVER_FLAGS=("${our_flags[@]}")
    fi
}

# run_floor LABEL SCENARIO ARGS...: the same run against a fresh floor server (once, also in A/B).
run_floor() {
    if [ "$FLOOR" = 1 ]; then STARTER=start_floor run "$@"; fi
}

# run_redis LABEL redis-fanout ARGS...: the same shape against a fresh redis-server (once, also in
# A/B), when there is one.
run_redis() {
    if [ "$REDIS" = 1 ]; then STARTER=start_redis run "$@"; fi
}

START=$(date +%s)
echo "==> load scenarios ($RUNS runs each, interleaved; ${DURATION}s windows after ${WARMUP}s warm-up)"
for i in $(seq "$RUNS"); do
    echo "-- round $i"
    # Each fan-out shape, then the same against the floor (and two of them against Redis pub/sub),
    # so the runs of one shape share the machine's state.
    run_ab "fanout N=1000 M=20" fanout --clients 1000 --rate 20
    run_floor "floor N=1000 M=20" fanout --clients 1000 --rate 20
    run_redis "redis N=1000 M=20" redis-fanout --clients 1000 --rate 20
    run_ab "fanout N=1000 M=200" fanout --clients 1000 --rate 200
    run_floor "floor N=1000 M=200" fanout --clients 1000 --rate 200
    run_ab "fanout N=1000 M=1000" fanout --clients 1000 --rate 1000
    run_floor "floor N=1000 M=1000" fanout --clients 1000 --rate 1000
    run_ab "fanout N=5000 M=20" fanout --clients 5000 --rate 20
    run_floor "floor N=5000 M=20" fanout --clients 5000 --rate 20
    run_redis "redis N=5000 M=20" redis-fanout --clients 5000 --rate 20
    run_ab "rooms 100x10 M=20" rooms --rooms 100 --clients 10 --rate 20
    run_floor "floor rooms 100x10 M=20" rooms --rooms 100 --clients 10 --rate 20
    run_ab "presence N=200 F=10" presence --clients 200 --hz 10
    run_ab "reconnect N=1000 M=20" reconnect --clients 1000 --rate 20
done
echo "-- single runs"
run_ab "reconnect N=1000 M=500 away 3s" reconnect --clients 1000 --rate 500 --offline-ms 3000
run_ab "idle N=$IDLE_N 1 room" idle --clients "$IDLE_N" --rooms 1
run_ab "idle N=$IDLE_N 100 rooms" idle --clients "$IDLE_N" --rooms 100
# Slow readers: 20 % stop reading for 2 s at a time (64 KiB receive buffer), then read for 0.1 s;
# the same load without them is the control for "are the fast readers slowed down".
run_ab "overload N=300 20% slow M=1000 1KB" overload --clients 300 --slow-share 0.2 --rate 1000 --payload 1000 \
    --pause-ms 2000 --read-ms 100 --rcvbuf-kb 64
run_ab "overload N=300 no slow M=1000 1KB" overload --clients 300 --slow-share 0 --rate 1000 --payload 1000
echo "load scenarios took $(($(date +%s) - START)) s"

if [ "$PROFILE" = 1 ]; then
    echo "==> perf profile of the server under fanout N=1000 M=200"
    start_server
    (pinned $LOAD_CORE "$LOAD" --addr "$ADDR" --server-pid "$SERVER_PID" --duration 8 --warmup 2 \
        fanout --clients 1000 --rate 200) > "$OUT/profile-load.txt" 2>&1 &
    LOAD_PID=$!
    sleep 3
    perf record -F 999 -g -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep 5 2> "$OUT/perf-record.log" || true
    wait "$LOAD_PID" || true
    stop_server
    perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -n 60 > "$OUT/perf-top.txt" || true
    echo "top symbols: $OUT/perf-top.txt"
fi

if [ "$CRITERION" = 1 ]; then
    echo "==> cargo bench --bench room"
    cargo bench --bench room 2>&1 | tee "$OUT/criterion.txt" | grep -E 'time:' || true
fi

echo "==> writing $DOC"
KEEP=""
if [ -f "$DOC" ] && grep -qF -- "$MARKER" "$DOC"; then
    KEEP=$(sed -n "/$(printf '%s' "$MARKER" | sed 's/[][\/.*^$]/\\&/g')/,\$p" "$DOC" | tail -n +2)
fi
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The server's code only: the load generator and the benches do not change what is measured.
if [ -n "$(git status --porcelain -- src Cargo.toml 2>/dev/null)" ]; then
    COMMIT="$COMMIT + uncommitted changes"
fi
{
    echo "# Benchmarks"
    echo
    echo "Generated by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) at commit $COMMIT. The tables are rewritten"
    echo "on every run; notes below the marker at the end are kept."
    echo
    echo "## Machine"
    echo
    echo "- CPU: ${CPU:-unknown}, $(nproc) cores (shared: other jobs may run during a benchmark); $MEM RAM"
    echo "- Kernel: $(uname -sr); $(rustc --version)"
    if [ "$PIN" = 1 ]; then
        echo "- Server: \`target/release/ringsync --listen 127.0.0.1:0 ${SERVER_FLAGS[*]}\` (otherwise default flags) pinned to core $SERVER_CORE with"
        echo "  \`TOKIO_WORKER_THREADS=1\`; a fresh process for every run."
        echo "- Load: \`target/release/ringsync-load\` pinned to core $LOAD_CORE (current-thread runtime, 64 connections per task)."
    else
        echo "- Server and load generator unpinned (taskset or a second core missing)."
    fi
    if [ "$REDIS" = 1 ]; then
        echo "- Redis: $(redis-server --version | cut -d' ' -f1-3), \`redis-server --bind 127.0.0.1 --port PORT --save '' --appendonly no\`"
        echo "  (otherwise its defaults) pinned like the server; a fresh process for every run."
    fi
    echo "- \`ulimit -n\` $FDS. Runs: $RUNS per scenario, interleaved round-robin; ${DURATION}s measurement window after"
    echo "  a ${WARMUP}s warm-up. Figures are medians over the runs, (min–max) where shown."
    echo
    echo "## Commands"
    echo
    echo '```sh'
    echo "scripts/bench.sh                                   # all of the below, writes this file"
    echo "cargo bench --bench room                           # criterion micro-benches only"
    echo "cargo build --release --workspace                  # the server, and the load generator (benches/ringsync-load/)"
    echo "target/release/ringsync --listen 127.0.0.1:8080 &  # then, for example:"
    echo "target/release/ringsync-load --server-pid \$! fanout --clients 1000 --rate 200"
    echo "target/release/ringsync-load rooms --rooms 100 --clients 10 --rate 20"
    echo "target/release/ringsync-load presence --clients 200 --hz 10"
    echo "target/release/ringsync-load reconnect --clients 1000 --rate 500 --offline-ms 3000"
    echo "target/release/ringsync-load idle --clients 10000"
    echo "target/release/ringsync-load overload --clients 300 --slow-share 0.2 --rate 1000 --payload 1000 --pause-ms 2000"
    echo "target/release/ringsync-load report target/bench/results.jsonl   # tables from JSON lines"
    echo "taskset -c 0 target/release/ringsync-load floor-server --listen 127.0.0.1:8090 &   # the fan-out floor:"
    echo "taskset -c 1 target/release/ringsync-load --addr 127.0.0.1:8090 --server-pid \$! --label 'floor N=1000 M=20' fanout --clients 1000 --rate 20"
    echo "taskset -c 0 redis-server --port 6390 --save '' --appendonly no &                 # Redis pub/sub, the same shape:"
    echo "taskset -c 1 target/release/ringsync-load --addr 127.0.0.1:6390 --server-pid \$! --label 'redis N=1000 M=20' redis-fanout --clients 1000 --rate 20"
    echo '```'
    echo
    echo "## Results"
    echo
    "$LOAD" report "$RESULTS"
    cat << 'EOF'
Columns: *offered* is the writers' rate times the readers per room; *delivered/s* counts changes that
reached readers (the `to - from` of every delta); *frames/s* is WebSocket messages received by
readers; *p50/p99/max* is the time from the writer putting its timestamp into a change to a reader
scanning it (both ends in the load generator, so it covers client → server, commit, fan-out and
loopback; recorded only in the window). *Server CPU* is utime+stime of the server from
`/proc/PID/stat` over the window, as a share of one core; *µs CPU/delivery* is that CPU time divided
by the changes delivered (the issue's CPU/delivery). Rows labelled *floor …* ran against
`ringsync-load floor-server` (pinned like the server) instead: a minimal server that writes one
pre-built delta frame to every reader socket with one `write` each and does nothing else, the least
any server spends per change delivered in its own frame. *Fan-out against the floor* divides each
fan-out row's median *µs CPU/delivery* by the floor's for the same shape in the same rounds
(*× floor*; under 1× when ringsync coalesces changes into fewer frames, which the floor never does;
*n* is ringsync's runs / the floor's). Rows labelled *redis …* ran `redis-fanout` against a fresh
`redis-server` (pinned the same way, no persistence): N subscribers on one pub/sub channel, one
publisher sending `PUBLISH` M times a second with a ~100-byte payload, every message its own frame;
*Fan-out against Redis pub/sub* divides each fan-out row's median *µs CPU/delivery* by Redis's for
the same shape (*× redis*). At 1,000 readers × 20/s a Redis message is about 147 bytes on the wire
(RESP framing and the channel's name around the payload), a ringsync delta frame about 155; Redis
keeps no history, sessions or document.
*Loadgen CPU* is the load generator's own share of its core: when it nears 100 %, latency includes
the load generator's queueing, not just the server's. *connect+sync* is the time for all clients to
connect, upgrade and receive `welcome` plus their first `snapshot`, with at most 128 attempts in
flight. Reconnect: every reader drops its
socket at once (no close frame) and resumes with `?session&epoch&since`; *got delta* is the share
brought up to date by a delta rather than a snapshot, *converge* the time until every reader holds
the revision the writer had when they dropped. Idle: *KiB/connection* is the server's RSS growth
divided by the connections, read once the presence traffic of the joins has died down.
Overload: one room, one writer, readers of which *slow* stop reading for `--pause-ms` at a time and
then read for `--read-ms` (their sockets' receive buffer capped at 64 KiB, so the backlog reaches
the server instead of sitting in loopback's multi-megabyte buffers); the control row has no slow
readers. *fast delivered/s* and *fast p50/p99/max* are the other readers', in the window; *fast got*
is their changes over the changes sent × fast readers (window edges can push it just past 100 %).
*slow frames/snapshots each* count per slow reader over the whole run, writing and catching up.
*not at final rev* counts readers that, after the writer stopped and its last change was acknowledged,
did not reach that revision within 30 s (0 = nothing lost); *converge ms* is the time from that
acknowledgement until every reader held it. *RSS start* is the server's before writing starts, *peak*
the highest of samples of `VmRSS` every 100 ms until the end, *end* after convergence (n=1).

EOF
    if [ -s "$OUT/criterion.txt" ]; then
        echo "## Micro-benchmarks (criterion, \`benches/room.rs\`)"
        echo
        echo "| bench | time (median estimate) | throughput |"
        echo "|---|---|---|"
        awk '
            function mid(line,   t) {
                match(line, /\[[^]]*\]/)
                split(substr(line, RSTART + 1, RLENGTH - 2), t, " ")
                return t[3] " " t[4]
            }
            state == 2 && !/thrpt:/ { print "| " name " | " time " | |"; state = 0 }
            /^[a-z_]+\/[^ ]+/ { name = $1; state = 1 }
            state == 1 && /time:/ { time = mid($0); state = 2; next }
            state == 2 && /thrpt:/ { print "| " name " | " time " | " mid($0) " |"; state = 0 }
            END { if (state == 2) print "| " name " | " time " | |" }
        ' "$OUT/criterion.txt"
        echo
        echo "*fanout/N* is one commit plus N recipients' frames (per-recipient throughput); *catchup/K*, one"
        echo "frame for a reader K changes behind; *snapshot/SIZE*, a commit that invalidates the cache, the"
        echo "encode and the frame; *presence*, 1,000 cursor updates, then the coalesced frame for a reader"
        echo "1,000 updates behind, then the same frame from the cache; *apply/OP*, one op on a 100-member"
        echo "document; *commit*, decoding a client change message and committing a small change."
        echo
    fi
    cat << 'EOF'
## Method and noise

- One fresh server per run, so no run inherits another's rooms, sessions or allocator state.
- Runs of different scenarios are interleaved (round-robin), so a disturbance from another process on
  the shared machine spreads over scenarios instead of spoiling one; medians are quoted, with the
  min–max range for the noisiest figures. Single runs (reconnect behind the ring, idle) are marked n=1.
- Server CPU is read in clock ticks (10 ms): ±0.1 % over a window of several seconds.
- *Other CPU* is the machine's busy time (`/proc/stat`) minus the server's and the load generator's:
  other jobs on the shared machine. A run in which it exceeded 10 % of a core is repeated (up to
  twice) and the noisy attempt is set aside in `target/bench/rejected.jsonl`. The load generator's
  `max_send_lag_ms` (how far a writer fell behind its schedule) is in the JSON lines for the same
  reason: a stalled load generator shows up there before it shows up as server latency.
- The load generator writes each client frame with the all-zero masking key (RFC 6455 allows it);
  the server runs its unmasking pass either way.
- The timestamp is taken when the writer builds the change (send time), not at commit: it adds the
  client → server hop (tens of µs on loopback) to every latency.
- Connection attempts are capped at 128 in flight: the server's listener is bound with the default
  backlog of 128, and a fuller accept queue drops SYNs, which the kernel retries only after 1 s.
EOF
    echo
    echo "$MARKER"
    if [ -n "$KEEP" ]; then printf '%s\n' "$KEEP"; fi
} > "$DOC.tmp"
mv "$DOC.tmp" "$DOC"
echo "wrote $DOC"
