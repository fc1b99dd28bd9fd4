#!/usr/bin/env bash
# kabar's benchmark suite. Usage, from anywhere in the repo:
#
#   bench/run.sh [all|disk|render|ingest|paced|delivery|sustain|startup]...
#
# Each part writes JSON lines to bench/results/<part>.jsonl (one per run) and the summary
# prints medians. RUNS (default 3) sets the repetitions; DURATION (default 20) the seconds
# of each wrk run; WORK (default bench/work, on the real disk) where state goes.
# Needs: wrk, python3, a Rust toolchain. Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
DURATION=${DURATION:-20}
WORK=${WORK:-$ROOT/bench/work}
RESULTS=$ROOT/bench/results
TOKEN=kabar-bench-token-5d1c
KABAR=$ROOT/target/release/kabar
BARE=$ROOT/bench/bare-axum/target/release/bare-axum
mkdir -p "$WORK" "$RESULTS"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT

build() {
    cargo build --release --locked --quiet
    (cd bench/bare-axum && cargo build --release --locked --quiet)
    # The harness binary itself, not `cargo bench`, so the PID run.sh kills is its own.
    HARNESS=$(cargo bench --locked --bench harness --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "harness" and m.get("executable"):
        print(m["executable"])')
}

harness() {
    "$HARNESS" "$@"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url
    for _ in $(seq 1 500); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.02
    done
    echo "no answer from $1" >&2
    return 1
}

rss() { # pid -> "VmHWM VmRSS" in MiB (their order in /proc/PID/status)
    awk '/^VmRSS|^VmHWM/ {printf "%.1f ", $2/1024}' "/proc/$1/status"
}

machine() {
    echo "{\"date\":\"$(date -u +%FT%TZ)\",\"nproc\":$(nproc),\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"kernel\":\"$(uname -r)\",\"commit\":\"$(git rev-parse --short HEAD)\",\"fs\":\"$(findmnt -n -o FSTYPE -T "$WORK")\"}" >"$RESULTS/machine.json"
}

# Closed-loop throughput with wrk: kabar (durable, auth on, delivery running to a fake Chat)
# and bare axum, same load, same run; notifications of 1 and of 10 new alerts.
ingest() {
    : >"$RESULTS/ingest.jsonl"
    for run in $(seq 1 "$RUNS"); do
        local dir=$WORK/ingest-$run port bare_port
        rm -rf "$dir"
        port=$(free_port)
        # The binary itself, so $! is its PID and cleanup stops it.
        "$HARNESS" fake-chat --dir "$dir" --spaces 1 --listen "127.0.0.1:$port" >"$WORK/fake-chat.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 500); do [ -f "$dir/kabar.yaml" ] && break; sleep 0.02; done
        "$KABAR" serve --config "$dir/kabar.yaml" >/dev/null 2>"$dir/kabar.log" &
        local kabar_pid=$!
        PIDS+=($kabar_pid)
        wait_http "http://127.0.0.1:$port/readyz"
        bare_port=$(free_port)
        "$BARE" "127.0.0.1:$bare_port" 2>/dev/null &
        PIDS+=($!)
        sleep 0.3
        for alerts in 1 10; do
            for target in kabar bare; do
                local url
                if [ $target = kabar ]; then url=http://127.0.0.1:$port; else url=http://127.0.0.1:$bare_port; fi
                local out
                out=$(ALERTS=$alerts TOKEN=$TOKEN RUN="r$run-$alerts-$(date +%s%N)" \
                    wrk -t2 -c32 -d"${DURATION}s" --timeout 10s -s bench/alerts.lua "$url/alerts" | tail -1)
                local mem=""
                if [ $target = kabar ]; then
                    read -r vmhwm vmrss <<<"$(rss "$kabar_pid")"
                    mem=",\"rss_mib\":$vmrss,\"hwm_mib\":$vmhwm"
                fi
                echo "{\"run\":$run,\"target\":\"$target\",\"alerts\":$alerts,${out#\{}" | sed "s/}\$/$mem}/" >>"$RESULTS/ingest.jsonl"
                tail -1 "$RESULTS/ingest.jsonl"
            done
        done
        cleanup
        sleep 0.5
    done
}

# Open-loop latency at a fixed rate (the p99 target is at 1,000 notifications/s).
paced() {
    : >"$RESULTS/paced.jsonl"
    for run in $(seq 1 "$RUNS"); do
        local dir=$WORK/paced-$run port
        rm -rf "$dir"
        port=$(free_port)
        # The binary itself, so $! is its PID and cleanup stops it.
        "$HARNESS" fake-chat --dir "$dir" --spaces 1 --listen "127.0.0.1:$port" >"$WORK/fake-chat.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 500); do [ -f "$dir/kabar.yaml" ] && break; sleep 0.02; done
        "$KABAR" serve --config "$dir/kabar.yaml" >/dev/null 2>"$dir/kabar.log" &
        PIDS+=($!)
        wait_http "http://127.0.0.1:$port/readyz"
        for alerts in 1 10; do
            harness paced --url "http://127.0.0.1:$port" --rate 1000 --seconds 30 --alerts "$alerts" |
                sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/paced.jsonl"
        done
        cleanup
        sleep 0.5
    done
}

delivery() {
    : >"$RESULTS/delivery.jsonl"
    for run in $(seq 1 "$RUNS"); do
        for spaces in 100 1000; do
            harness delivery --work "$WORK" --spaces "$spaces" --per-space 30 |
                sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/delivery.jsonl"
        done
    done
}

sustain() {
    : >"$RESULTS/sustain.jsonl"
    for run in $(seq 1 "$RUNS"); do
        harness sustain --work "$WORK" --spaces 1000 --seconds 60 |
            sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/sustain.jsonl"
    done
}

startup() {
    : >"$RESULTS/startup.jsonl"
    harness startup --work "$WORK" --messages 100000 --runs 5 | tee -a "$RESULTS/startup.jsonl"
}

# The floor under every durable acknowledgement: one 4 KiB append + fsync on $WORK's disk,
# as a SQLite WAL commit does.
disk() {
    python3 - "$WORK" <<'PY' | tee "$RESULTS/disk.jsonl"
import json, os, statistics, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
samples = []
for _ in range(1000):
    os.write(fd, b"x" * 4096)
    start = time.perf_counter()
    os.fsync(fd)
    samples.append((time.perf_counter() - start) * 1000)
os.close(fd)
os.unlink(path)
samples.sort()
pick = lambda p: round(samples[min(len(samples) - 1, int(p / 100 * len(samples)))], 3)
print(json.dumps({"fsyncs": len(samples), "p50_ms": pick(50), "p90_ms": pick(90),
                  "p99_ms": pick(99), "max_ms": round(samples[-1], 3),
                  "mean_ms": round(statistics.mean(samples), 3)}))
PY
}

render() {
    cargo bench --locked --bench render -- --noplot 2>&1 | tee "$RESULTS/render.txt" |
        grep -E '^render/|time:'
}

PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(all)
[ "${PARTS[0]}" = all ] && PARTS=(disk render ingest paced delivery sustain startup)
build
machine
for part in "${PARTS[@]}"; do
    echo "== $part"
    "$part"
done
python3 bench/summary.py "$RESULTS"
