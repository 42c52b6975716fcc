#!/usr/bin/env bash
# Cluster-mode benchmarks (issue 15): the same loads against one node and against two nodes
# sharing one redis-server (writers on the owner A, readers on the follower B), alternately,
# RUNS runs each. Server CPU counts every process involved (single: A + Redis; cluster: A + B +
# Redis, through ringsync-load's --also-pid). Prints a Markdown table of medians; the raw runs
# are left in $OUT/cluster.jsonl (docs/BENCHMARKS.md's section "Two nodes on Redis" is written by
# hand from them). The failover figures come from `cargo test --test cluster failover_figures
# -- --ignored --nocapture`.
#
#   scripts/bench-cluster.sh                    # about 5 minutes on 2 cores
#   RUNS=1 DURATION=3 scripts/bench-cluster.sh  # quicker and noisier
#
# Needs redis-server (scripts/test.sh installs it). Load stays on 127.0.0.1; the servers and the
# temporary Redis directory are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
JSON="$OUT/cluster.jsonl"
: > "$JSON"

cargo build --release -q -p ringsync -p ringsync-load
LOAD=target/release/ringsync-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$REDIS_DIR"; }
trap cleanup EXIT

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" >/dev/null 2>&1 &
REDIS=$!; PIDS+=("$REDIS")
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
FLAGS=(--redis "redis://127.0.0.1:$RPORT/" --max-room-clients 0 --rate-changes 0 --rate-ip-connections 0 --max-ip-connections 0)
APORT=$(free_port); BPORT=$(free_port)
target/release/ringsync --listen "127.0.0.1:$APORT" "${FLAGS[@]}" >/dev/null 2>&1 &
A=$!; PIDS+=("$A")
target/release/ringsync --listen "127.0.0.1:$BPORT" "${FLAGS[@]}" >/dev/null 2>&1 &
B=$!; PIDS+=("$B")
sleep 1

COMMON=(--duration "$DURATION" --warmup 2 --addr "127.0.0.1:$APORT" --json "$JSON")
SINGLE=(--server-pid "$A" --also-pid "$REDIS")
CLUSTER=(--reader-addr "127.0.0.1:$BPORT" --server-pid "$A" --also-pid "$B" --also-pid "$REDIS")
for run in $(seq "$RUNS"); do
    echo "run $run of $RUNS" >&2
    $LOAD fanout --clients 1000 --rate 50 "${COMMON[@]}" "${SINGLE[@]}" --label fan-single >/dev/null
    $LOAD fanout --clients 1000 --rate 50 "${COMMON[@]}" "${CLUSTER[@]}" --label fan-cluster >/dev/null
    $LOAD rooms --rooms 100 --clients 10 --rate 20 "${COMMON[@]}" "${SINGLE[@]}" --label rooms-single >/dev/null
    $LOAD rooms --rooms 100 --clients 10 --rate 20 "${COMMON[@]}" "${CLUSTER[@]}" --label rooms-cluster >/dev/null
done
$LOAD report "$JSON" | tee "$OUT/cluster.md"
