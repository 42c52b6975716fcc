#!/usr/bin/env bash
# Durable-room benchmarks (issue 16): commit throughput and ack latency for --memory-only and each
# --fsync mode, one writer in one room and 100 writers in 100 rooms; the disk's own fsync rate;
# recovery of one room with 1,000,000 logged changes; start-up with 10,000 stored rooms. Follows
# scripts/bench.sh: release build, server pinned to core 0 (one tokio worker), load generator on
# core 1, a fresh server (and a fresh data directory) per run, RUNS runs interleaved, medians.
# Prints the Markdown tables and leaves them in $OUT/durable.md (docs/BENCHMARKS.md's section
# "Durable rooms" is written by hand from them).
#
#   scripts/bench-durable.sh                    # everything, about 10 minutes on 2 cores
#   RUNS=1 DURATION=3 scripts/bench-durable.sh  # quicker and noisier
#   ONLY='commit' scripts/bench-durable.sh      # only the parts whose name matches (grep -E):
#                                               # commit, fsync-rate (once per commit round, or
#                                               # RUNS times alone), recovery, startup
#   WINDOW=16 BIG_WINDOW=256                    # changes in flight per writer (a second row for
#                                               # --fsync always with BIG_WINDOW; 0 = none)
#   SHAPES='1x1 100x100' MODES='memory never batch always'
#                                               # the commit runs' writers x rooms and store modes
#                                               # (e.g. SHAPES=100x100 MODES='memory batch'
#                                               # BIG_WINDOW=0 RUNS=7: one comparison, more runs)
#   RECOVERY_CHANGES=1000000 STORED_ROOMS=10000
#   DATA_PARENT=/some/disk                      # where the temporary data directories go
#                                               # (default target/: the disk being measured)
#
# Load stays on 127.0.0.1; every run is bounded in time. The data directories are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ONLY=${ONLY:-}
WINDOW=${WINDOW:-16}
BIG_WINDOW=${BIG_WINDOW:-256}
SHAPES=${SHAPES:-1x1 100x100}
MODES=${MODES:-memory never batch always}
RECOVERY_CHANGES=${RECOVERY_CHANGES:-1000000}
STORED_ROOMS=${STORED_ROOMS:-10000}
NOISE_MAX=${NOISE_MAX:-0.1}
RETRIES=${RETRIES:-2}
OUT=${OUT:-target/bench-durable}
DATA_PARENT=${DATA_PARENT:-target}
SERVER_CORE=0
LOAD_CORE=1

mkdir -p "$OUT" "$DATA_PARENT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
: > "$OUT/rejected.jsonl"
: > "$OUT/server.log"
DATA_ROOT=$(mktemp -d -p "$DATA_PARENT" bench-durable-data.XXXXXX)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "==> cargo build --release"
cargo build --release -p ringsync --bin ringsync -p ringsync-load --bin ringsync-load
SERVER=${SERVER_BIN:-target/release/ringsync}
LOAD=target/release/ringsync-load
# Every client comes from 127.0.0.1 and writes as fast as it is acknowledged: lift the per-IP and
# per-connection limits, as bench.sh does, and also the per-connection byte rate (2 MiB/s by
# default, about 13,000 of these changes a second: one writer would measure that limit).
SERVER_FLAGS=(--max-room-clients 0 --rate-changes 0 --rate-ip-connections 0 --max-ip-connections 0
    --rate-inbound-bytes 0)

PIN=0
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN=1; fi
pinned() { # pinned CORE CMD... (execs, so the caller's $! is the command's pid)
    local core=$1
    shift
    if [ "$PIN" = 1 ]; then exec taskset -c "$core" "$@"; else exec "$@"; fi
}
pin_prefix() { # the words that pin a command to CORE (for commands the load generator spawns)
    if [ "$PIN" = 1 ]; then echo "taskset -c $1"; fi
}

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$DATA_ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server FLAGS...: a server on a free port with SERVER_FLAGS and FLAGS.
start_server() {
    : > "$OUT/server.out"
    (RUST_LOG=warn TOKIO_WORKER_THREADS=1 pinned $SERVER_CORE "$SERVER" --listen 127.0.0.1:0 "${SERVER_FLAGS[@]}" "$@" \
        > "$OUT/server.out" 2>> "$OUT/server.log") &
    SERVER_PID=$!
    ADDR=""
    for _ in $(seq 400); do
        ADDR=$(sed -n 's#^ringsync listening on http://##p' "$OUT/server.out")
        [ -n "$ADDR" ] && return 0
        sleep 0.05
    done
    echo "the server did not start; its log:" >&2
    tail -n 20 "$OUT/server.log" >&2
    exit 1
}

# store_flags MODE: the server flags of a store mode (memory, never, batch, always), with a fresh
# data directory for the file modes.
store_flags() {
    if [ "$1" = memory ]; then
        echo "--memory-only"
    else
        local d
        d=$(mktemp -d -p "$DATA_ROOT" "data-$1.XXXXXX")
        echo "--data-dir $d --fsync $1"
    fi
}

wanted() { [ -z "$ONLY" ] || grep -qE -- "$ONLY" <<< "$1"; }

# commit_run LABEL MODE ARGS...: one commit run against a fresh server (and data directory);
# repeated when other processes took more than NOISE_MAX of a core.
commit_run() {
    local label=$1 mode=$2
    shift 2
    local attempt other
    for attempt in $(seq 0 "$RETRIES"); do
        # shellcheck disable=SC2046 # store_flags prints separate words on purpose
        start_server $(store_flags "$mode")
        printf '%-40s ' "$label"
        : > "$OUT/run.jsonl"
        if ! (pinned $LOAD_CORE "$LOAD" --addr "$ADDR" --server-pid "$SERVER_PID" --label "$label" \
            --json "$OUT/run.jsonl" --duration "$DURATION" --warmup "$WARMUP" commit "$@") > "$OUT/last.txt" 2>&1; then
            echo "FAILED:"
            sed 's/^/    /' "$OUT/last.txt" | tail -n 20
            stop_server
            rm -rf "${DATA_ROOT:?}"/data-*
            return 0
        fi
        stop_server
        rm -rf "${DATA_ROOT:?}"/data-*
        other=$(sed -nE 's/.*"other_cpu_util":([0-9.e-]+).*/\1/p' "$OUT/run.jsonl")
        sed -E 's/.*"committed_per_s":([0-9.]+).*"ack_p50_ms":([0-9.]+),"ack_p99_ms":([0-9.]+).*/committed\/s \1  ack p50 \2 ms  p99 \3 ms/' \
            "$OUT/run.jsonl" | tr -d '\n'
        echo "${other:+  (other CPU $other)}"
        # Other CPU includes the kernel's own I/O work: `always` runs (fsyncs, the journal) are
        # kept whatever it is; `batch` and `never` runs show 0-3 % of a core of it on a quiet
        # machine (2026-12-04), so they retry as memory-only ones do (keeping their noisy runs
        # while memory-only's were repeated pulled their medians down).
        if [ "$mode" != always ] && [ -n "$other" ] && [ "$attempt" -lt "$RETRIES" ] \
            && awk -v o="$other" -v m="$NOISE_MAX" 'BEGIN { exit !(o > m) }'; then
            echo "    noisy: other processes used $other of a core; repeating"
            cat "$OUT/run.jsonl" >> "$OUT/rejected.jsonl"
            continue
        fi
        cat "$OUT/run.jsonl" >> "$RESULTS"
        return 0
    done
}

# startup_run LABEL DIR [--room R --rev N]: the load generator spawns a pinned server on DIR.
startup_run() {
    local label=$1 dir=$2
    shift 2
    printf '%-40s ' "$label"
    # shellcheck disable=SC2046 # pin_prefix prints separate words on purpose
    if ! (RUST_LOG=warn TOKIO_WORKER_THREADS=1 pinned $LOAD_CORE "$LOAD" --label "$label" --json "$RESULTS" \
        --timeout 300 startup "$@" -- $(pin_prefix $SERVER_CORE) "$SERVER" --listen 127.0.0.1:0 \
        "${SERVER_FLAGS[@]}" --data-dir "$dir") > "$OUT/last.txt" 2>> "$OUT/server.log"; then
        echo "FAILED:"
        sed 's/^/    /' "$OUT/last.txt" | tail -n 20
        return 0
    fi
    tail -n 1 "$OUT/last.txt" | sed -E 's/.*"listen_ms":([0-9.]+),"first_get_ms":([0-9.null]+).*"server_rss_mb":([0-9.null]+).*/listening \1 ms  first GET \2 ms  RSS \3 MB/'
}

# fill LABEL DIR FLAGS -- COMMIT ARGS: a server on DIR (--fsync never) written to by `commit
# --changes`, then stopped with SIGTERM (which flushes).
fill() {
    local label=$1 dir=$2
    shift 2
    local flags=()
    while [ "$1" != -- ]; do flags+=("$1"); shift; done
    shift
    start_server --data-dir "$dir" --fsync never "${flags[@]}"
    printf '%-40s ' "$label"
    if ! (pinned $LOAD_CORE "$LOAD" --addr "$ADDR" --server-pid "$SERVER_PID" --label "$label" \
        --json "$OUT/fill.jsonl" --duration 600 --timeout 120 --room-prefix "$(basename "$dir")" \
        commit --exact-rooms "$@") > "$OUT/last.txt" 2>&1; then
        echo "FAILED:"
        sed 's/^/    /' "$OUT/last.txt" | tail -n 20
        stop_server
        return 1
    fi
    stop_server
    sed -E 's/.*"committed":([0-9]+),"committed_per_s":([0-9.]+).*"window_s":([0-9.]+).*/\1 changes in \3 s (\2\/s)/' \
        <(tail -n 1 "$OUT/fill.jsonl")
    echo "    on disk: $(du -sh "$dir" | cut -f1), $(find "$dir/rooms" -mindepth 1 -maxdepth 1 | wc -l) rooms"
}

# fsync_rate: the disk's own rate, in the data directories' filesystem. The shared VM disk's rate
# swings by several times within minutes, so it is measured once per commit round, beside the
# runs it is the floor of.
fsync_rate() {
    printf '%-40s ' "fsync-rate 100 B"
    if ! (pinned $LOAD_CORE "$LOAD" --label "fsync-rate 100 B" --json "$RESULTS" --duration "$DURATION" \
        fsync-rate --dir "$DATA_ROOT" --bytes 100) > "$OUT/last.txt" 2>&1; then
        echo FAILED
        tail -n 5 "$OUT/last.txt"
        return 0
    fi
    tail -n 1 "$OUT/last.txt" | sed -E 's/.*"fsyncs_per_s":([0-9.]+).*"fsync_p50_ms":([0-9.]+),"fsync_p99_ms":([0-9.]+).*/\1 fsyncs\/s  p50 \2 ms  p99 \3 ms/'
}

START=$(date +%s)
: > "$OUT/fill.jsonl"
if wanted commit; then
    echo "==> commit ($RUNS runs each, interleaved; ${DURATION}s windows after ${WARMUP}s warm-up; K=$WINDOW)"
    for i in $(seq "$RUNS"); do
        echo "-- round $i"
        if wanted fsync-rate; then fsync_rate; fi
        for shape in $SHAPES; do
            w=${shape%x*} r=${shape#*x}
            for mode in $MODES; do
                commit_run "commit ${w}x${r} $mode K=$WINDOW" "$mode" --writers "$w" --rooms "$r" --window "$WINDOW"
            done
            if [ "$BIG_WINDOW" -gt 0 ]; then
                commit_run "commit ${w}x${r} always K=$BIG_WINDOW" always --writers "$w" --rooms "$r" --window "$BIG_WINDOW"
                commit_run "commit ${w}x${r} memory K=$BIG_WINDOW" memory --writers "$w" --rooms "$r" --window "$BIG_WINDOW"
            fi
        done
    done
elif wanted fsync-rate; then
    for i in $(seq "$RUNS"); do fsync_rate; done
fi

if wanted recovery; then
    # One writer, 64 changes in flight; the room ends at rev RECOVERY_CHANGES (its first change
    # creates /n). Twice: with the default snapshots (every 10,000 changes or 8 MiB: a restart
    # replays at most that), and with snapshots by count off and by bytes at 64 GiB, so the whole
    # log is replayed (the worst case the issue names).
    n=$((RECOVERY_CHANGES - 1))
    for variant in default nosnap; do
        dir=$DATA_ROOT/recovery-$variant
        mkdir -p "$dir"
        if [ "$variant" = default ]; then extra=(); else extra=(--snapshot-every 0 --snapshot-every-bytes 68719476736); fi
        echo "==> recovery ($variant snapshots): filling one room with $RECOVERY_CHANGES changes"
        fill "fill recovery-$variant" "$dir" "${extra[@]}" -- --writers 1 --rooms 1 --window 64 --changes "$n" || continue
        for i in $(seq "$RUNS"); do
            startup_run "recovery 1 room ${RECOVERY_CHANGES} ($variant snapshots)" "$dir" \
                --room "recovery-$variant-0" --rev "$RECOVERY_CHANGES"
            startup_run "start-up, ${RECOVERY_CHANGES}-change room on disk ($variant), no GET" "$dir"
        done
        if [ "$variant" = nosnap ]; then
            echo "    files: $(ls "$dir"/rooms/*/ | tr '\n' ' ')"
        fi
        rm -rf "$dir"
    done
fi

if wanted startup; then
    dir=$DATA_ROOT/rooms$STORED_ROOMS
    empty=$DATA_ROOT/empty
    mkdir -p "$dir" "$empty"
    echo "==> start-up: $STORED_ROOMS stored rooms, 2 changes each"
    fill "fill $STORED_ROOMS rooms" "$dir" -- --writers "$STORED_ROOMS" --rooms "$STORED_ROOMS" --window 1 --changes 1 || true
    for i in $(seq "$RUNS"); do
        startup_run "start-up, empty data dir" "$empty"
        startup_run "start-up, $STORED_ROOMS rooms, + first GET" "$dir" --room "$(basename "$dir")-$((STORED_ROOMS / 2))" --rev 2
        startup_run "start-up, $STORED_ROOMS rooms, no GET" "$dir"
    done
fi
echo "took $(($(date +%s) - START)) s"

echo
"$LOAD" report "$RESULTS" | tee "$OUT/durable.md"
if [ -s "$OUT/fill.jsonl" ]; then
    echo "Fills (n=1):" | tee -a "$OUT/durable.md"
    "$LOAD" report "$OUT/fill.jsonl" | tee -a "$OUT/durable.md"
fi
