"""Prints the medians of the runs recorded by bench/run.sh (bench/results/*.jsonl)."""

import json
import re
import statistics
import sys
from pathlib import Path


def load(results, name):
    path = results / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    machine = results / "machine.json"
    if machine.exists():
        print("machine:", machine.read_text().strip())

    for r in load(results, "disk"):
        print(f"\ndisk: 4 KiB write + fsync x{r['fsyncs']}: p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, "
              f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms")

    ingest = load(results, "ingest")
    if ingest:
        print(f"\ningest (wrk, closed loop; medians of {max(r['run'] for r in ingest)} runs)")
        print(f"{'target':<7} {'alerts':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non2xx':>7} {'errors':>7}")
        for alerts in sorted({r["alerts"] for r in ingest}):
            for target in ("kabar", "bare"):
                rows = [r for r in ingest if r["alerts"] == alerts and r["target"] == target]
                print(f"{target:<7} {alerts:>6} {med(rows, 'ok_rps'):>9.0f} {med(rows, 'p50_ms'):>8.2f} "
                      f"{med(rows, 'p99_ms'):>8.2f} {sum(r['non2xx'] for r in rows):>7} "
                      f"{sum(r['socket_errors'] for r in rows):>7}")
            ratios = []
            for run in {r["run"] for r in ingest}:
                pair = {r["target"]: r for r in ingest if r["run"] == run and r["alerts"] == alerts}
                if "kabar" in pair and "bare" in pair:
                    ratios.append(pair["kabar"]["ok_rps"] / pair["bare"]["ok_rps"])
            if ratios:
                print(f"        kabar/bare, {alerts} alert(s): median {statistics.median(ratios):.1%} "
                      f"(runs: {', '.join(f'{x:.1%}' for x in sorted(ratios))})")
        kabar_rows = [r for r in ingest if r["target"] == "kabar"]
        print(f"        kabar RSS after load: median {med(kabar_rows, 'rss_mib'):.1f} MiB, "
              f"peak {max(r['hwm_mib'] for r in kabar_rows):.1f} MiB")

    paced = load(results, "paced")
    if paced:
        print("\npaced (open loop, latency from the scheduled send)")
        for alerts in sorted({r["alerts_per_notification"] for r in paced}):
            rows = [r for r in paced if r["alerts_per_notification"] == alerts]
            print(f"  {rows[0]['target_rate']:.0f}/s x {alerts} alert(s): achieved {med(rows, 'achieved_rate'):.0f}/s, "
                  f"p50 {med(rows, 'p50_ms'):.2f} ms, p99 {med(rows, 'p99_ms'):.2f} ms, "
                  f"p99.9 {med(rows, 'p999_ms'):.2f} ms, failed {sum(r['failed'] for r in rows)}")

    delivery = load(results, "delivery")
    if delivery:
        print("\ndelivery (backlog of 30 per space, rate_limit_per_second 1)")
        for spaces in sorted({r["spaces"] for r in delivery}):
            rows = [r for r in delivery if r["spaces"] == spaces]
            print(f"  {spaces:>5} spaces: {med(rows, 'msgs_per_s'):.1f} msg/s "
                  f"(full seconds: {med(rows, 'median_msgs_per_s_full_seconds'):.0f}/s), "
                  f"CPU {med(rows, 'cpu_us_per_msg'):.0f} us/msg, utilisation {med(rows, 'cpu_utilisation'):.2f} cores, "
                  f"RSS {med(rows, 'rss_mib'):.1f} MiB, 429s {sum(r['chat_429'] for r in rows)}")

    sustain = load(results, "sustain")
    if sustain:
        print("\nsustain (1 notification/s into each space while delivering)")
        for r in sustain:
            print(f"  run {r['run']}: {r['spaces']} spaces, ingest {r['ingest']['achieved_rate']:.0f}/s "
                  f"(p99 {r['ingest']['p99_ms']:.1f} ms, failed {r['ingest']['failed']}), "
                  f"sent {r['sent_per_s']:.0f}/s, outbox at end {r['outbox_at_end']:.0f}, "
                  f"CPU {r['cpu_utilisation']:.2f} cores, RSS {r['rss_mib']:.1f} MiB, 429s {r['chat_429']}")

    for r in load(results, "startup"):
        print(f"\nstartup: idle RSS {r['idle_rss_mib_median']:.1f} MiB; ready in {r['empty_ready_ms_median']:.0f} ms empty, "
              f"{r['queued_ready_ms_median']:.0f} ms with {r['queued_messages']} queued "
              f"(RSS {r['queued_rss_at_ready_mib_median']:.1f} MiB at ready, "
              f"{r['queued_rss_after_5s_mib_median']:.1f} MiB 5 s later)")

    events = load(results, "events")
    if events:
        print(f"\nevents (/chat/events, 16 clients; medians of {max(r['run'] for r in events)} runs)")
        for scenario in ("garbage_token", "forged_signature", "message_help", "acknowledge"):
            rows = [r for r in events if r["scenario"] == scenario]
            if rows:
                print(f"  {scenario:<17} {med(rows, 'per_s'):>8.0f}/s  p50 {med(rows, 'p50_ms'):.2f} ms  "
                      f"p99 {med(rows, 'p99_ms'):.2f} ms  CPU {med(rows, 'kabar_cpu_us_per_request'):.1f} us/request  "
                      f"unexpected status {sum(r['unexpected_status'] for r in rows)}")

    render = results / "render.txt"
    if render.exists():
        print("\nrender (criterion, median estimate per message)")
        name = None
        for line in render.read_text().splitlines():
            m = re.match(r"^(render/\S+)", line)
            if m:
                name = m.group(1)
            t = re.search(r"time:\s+\[\S+ \S+ (\S+ \S+) \S+ \S+\]", line)
            if t and name:
                print(f"  {name:<22} {t.group(1)}")
                name = None


if __name__ == "__main__":
    main()
