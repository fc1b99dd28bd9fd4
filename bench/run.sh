#!/usr/bin/env bash
# kabar's benchmark suite. Usage, from anywhere in the repo:
#
#   bench/run.sh [all|disk|render|ingest|paced|delivery|sustain|startup|events|replicas_ingest|replicas_delivery]...
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
trap 'cleanup; pg_down' EXIT

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

# The machine a run was on: machine.json for a whole-suite run, machine-PART.json for a
# part run on its own, so recording one part keeps the record of the others.
machine() { # file
    echo "{\"date\":\"$(date -u +%FT%TZ)\",\"nproc\":$(nproc),\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"kernel\":\"$(uname -r)\",\"commit\":\"$(git rev-parse --short HEAD)\",\"fs\":\"$(findmnt -n -o FSTYPE -T "$WORK")\"}" >"$RESULTS/$1"
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

# The Chat events endpoint: tokens refused (garbage, forged), verified MESSAGE events, and
# Acknowledge presses (verified, then a store transaction), 16 closed-loop clients.
events() {
    : >"$RESULTS/events.jsonl"
    for run in $(seq 1 "$RUNS"); do
        harness events --work "$WORK" --seconds 10 --connections 16 |
            sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/events.jsonl"
    done
}

startup() {
    : >"$RESULTS/startup.jsonl"
    harness startup --work "$WORK" --messages 100000 --runs 5 | tee -a "$RESULTS/startup.jsonl"
}

# A throwaway PostgreSQL cluster under $WORK/pg on a free port, durable as in production
# (fsync and synchronous_commit on; kabar sets the latter itself). As user postgres when
# run as root: initdb refuses root. Sets PG_URL_BASE; pg_db NAME creates a database.
PG_PORT=""
pg_up() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$bin/initdb" ] || { echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2; exit 1; }
    local dir=$WORK/pg run=()
    pg_down
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "kabar-bench-pg" >"$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres:postgres "$dir"
        run=(runuser -u postgres --)
    fi
    "${run[@]}" "$bin/initdb" -D "$dir/data" -U kabar --pwfile "$dir/pwfile" --auth=scram-sha-256 -E UTF8 >/dev/null
    PG_PORT=$(free_port)
    "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    PG_STOP=("${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop)
}
pg_down() {
    if [ -n "${PG_STOP[*]:-}" ]; then "${PG_STOP[@]}" >/dev/null 2>&1 || true; fi
    PG_STOP=()
}
pg_db() { # name -> URL of a new database
    PGPASSWORD=kabar-bench-pg psql -h 127.0.0.1 -p "$PG_PORT" -U kabar -d postgres -Xqc "CREATE DATABASE $1" >/dev/null
    echo "postgres://kabar:kabar-bench-pg@127.0.0.1:$PG_PORT/$1?sslmode=disable"
}

# Ingest on PostgreSQL with 1 and 3 replicas against SQLite, in the same run: closed-loop
# wrk, 1 new alert per notification, 32 connections in all (3 × 11 over 3 replicas).
replicas_ingest() {
    : >"$RESULTS/replicas-ingest.jsonl"
    pg_up
    for run in $(seq 1 "$RUNS"); do
        for setup in sqlite postgres-1 postgres-3; do
            local dir=$WORK/replicas-$setup-$run port store=() n=1
            rm -rf "$dir"
            port=$(free_port)
            case $setup in
                sqlite) ;;
                postgres-*) store=(--postgres "$(pg_db "ingest_${setup#postgres-}_$run")"); n=${setup#postgres-} ;;
            esac
            "$HARNESS" fake-chat --dir "$dir" --spaces 1 --listen "127.0.0.1:$port" "${store[@]}" >"$WORK/fake-chat.out" 2>&1 &
            PIDS+=($!)
            for _ in $(seq 1 500); do [ -f "$dir/kabar.yaml" ] && break; sleep 0.02; done
            local urls=()
            for i in $(seq 1 "$n"); do
                local config=$dir/kabar.yaml p=$port
                if [ "$i" -gt 1 ]; then
                    p=$(free_port)
                    config=$dir/kabar-$i.yaml
                    sed "s/^listen: .*/listen: \"127.0.0.1:$p\"/" "$dir/kabar.yaml" >"$config"
                fi
                "$KABAR" serve --config "$config" >/dev/null 2>"$dir/kabar-$i.log" &
                PIDS+=($!)
                wait_http "http://127.0.0.1:$p/readyz"
                urls+=("http://127.0.0.1:$p")
            done
            local conns=$((32 / n)) outs=() i=0
            for url in "${urls[@]}"; do
                i=$((i + 1))
                ALERTS=1 TOKEN=$TOKEN RUN="$setup-r$run-$i-$(date +%s%N)" \
                    wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 10s -s bench/alerts.lua "$url/alerts" >"$dir/wrk-$i.out" &
                outs+=("$dir/wrk-$i.out")
            done
            # The wrk runs end by themselves after DURATION; the servers keep running.
            sleep "$DURATION"
            for _ in $(seq 1 100); do
                local finished=0
                for out in "${outs[@]}"; do grep -q ok_rps "$out" 2>/dev/null && finished=$((finished + 1)); done
                [ "$finished" -eq "${#outs[@]}" ] && break
                sleep 0.2
            done
            python3 - "$run" "$setup" "$n" "${outs[@]}" <<'PY' | tee -a "$RESULTS/replicas-ingest.jsonl"
import json, sys
run, setup, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
parts = [json.loads(open(path).read().strip().splitlines()[-1]) for path in sys.argv[4:]]
total = {"run": int(run), "setup": setup, "replicas": n}
total["ok_rps"] = round(sum(p["ok_rps"] for p in parts), 1)
for key in ("socket_errors", "non2xx", "requests"):
    total[key] = sum(p.get(key, 0) for p in parts)
# Each replica's wrk has its own percentiles: the worst of them bounds the fleet's.
for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
    total[key] = max(p[key] for p in parts if key in p) if any(key in p for p in parts) else None
print(json.dumps(total))
PY
            cleanup
            sleep 0.5
        done
    done
    pg_down
}

# Delivery across 1,000 spaces split over 3 replicas on PostgreSQL, and the takeover time
# after kill -9 of the replica holding most spaces.
replicas_delivery() {
    : >"$RESULTS/replicas-delivery.jsonl"
    : >"$RESULTS/takeover.jsonl"
    pg_up
    for run in $(seq 1 "$RUNS"); do
        harness delivery --work "$WORK" --spaces 1000 --per-space 30 --replicas 3 \
            --postgres "$(pg_db "delivery_$run")" --lease 15s |
            sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/replicas-delivery.jsonl"
        harness takeover --work "$WORK" --spaces 20 --lease 5s --postgres "$(pg_db "takeover_$run")" |
            sed "s/^{/{\"run\":$run,/" | tee -a "$RESULTS/takeover.jsonl"
    done
    pg_down
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

ALL=(disk render ingest paced delivery sustain startup events replicas_ingest replicas_delivery)
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(all)
[ "${PARTS[0]}" = all ] && PARTS=("${ALL[@]}")
build
[ "${PARTS[*]}" = "${ALL[*]}" ] && machine machine.json
for part in "${PARTS[@]}"; do
    echo "== $part"
    [ "${PARTS[*]}" = "${ALL[*]}" ] || machine "machine-$part.json"
    "$part"
done
python3 bench/summary.py "$RESULTS"
