//! Render cost per message of the built-in templates: one firing alert (the common case)
//! and a per_group message about 20 alerts, in text and in card format. A card message
//! also renders its text version (the fallback body), so "card" includes "text".
//!
//! `cargo bench --bench render`; results are recorded in bench/README.md.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use serde_json::{Value, json};

use kabar::Config;
use kabar::Notification;
use kabar::{AlertSet, MessageKind, Subject};
use kabar::{RenderInput, Renderer};

/// A notification shaped like Alertmanager's, with `count` firing alerts of one group.
fn notification(count: usize) -> Notification {
    let alerts: Vec<Value> = (0..count)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {
                    "alertname": "DiskFull",
                    "instance": format!("db{i}:9100"),
                    "severity": "critical",
                    "job": "node",
                },
                "annotations": {
                    "summary": format!("Disk almost full on db{i}"),
                    "description": "/var is 97% full; at the current rate it fills in 2 hours",
                    "runbook_url": "https://runbooks.example.com/disk-full",
                },
                "startsAt": "2026-11-28T00:52:38Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.local/graph?g0.expr=node_filesystem_avail_bytes",
                "fingerprint": format!("{i:016x}"),
            })
        })
        .collect();
    let body = json!({
        "version": "4",
        "receiver": "ops",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "severity": "critical", "job": "node"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local:9093",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "truncatedAlerts": 0,
    });
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    Notification::parse(&bytes).expect("the benchmark notification is valid")
}

fn renderer(format: &str) -> (Config, Renderer) {
    let yaml = format!(
        "spaces:\n  ops:\n    dry_run: true\n    format: {format}\n    mentions: {{critical: [all]}}\n"
    );
    let config = Config::parse(&yaml, Path::new("."), &|_| None).expect("benchmark config");
    let renderer = Renderer::new(&config).expect("built-in templates compile");
    (config, renderer)
}

fn render_benchmarks(c: &mut Criterion) {
    let now: Timestamp = "2026-11-28T01:00:00Z".parse().expect("a valid timestamp");
    let one = notification(1);
    let twenty = notification(20);
    let single = Subject::Alert(0);
    let group = Subject::Alerts(AlertSet {
        firing: (0..20).collect(),
        resolved: Vec::new(),
        still_firing: Vec::new(),
    });
    let mut bench = c.benchmark_group("render");
    for format in ["text", "card"] {
        let (config, renderer) = renderer(format);
        let space = &config.spaces["ops"];
        let cases = [
            ("firing-1", MessageKind::Firing, &single, &one),
            ("group-20", MessageKind::Group, &group, &twenty),
        ];
        for (case, kind, subject, notification) in cases {
            let input = RenderInput {
                space,
                kind,
                subject,
                notification,
                thread_key: Some("kabar-ops-0000000000000000".to_owned()),
                now,
            };
            let (probe, failures) = renderer.render(&input);
            assert!(
                failures.is_empty(),
                "built-in templates failed: {failures:?}"
            );
            assert!(!probe.fell_back, "built-in templates fell back");
            bench.bench_function(BenchmarkId::new(format, case), |b| {
                b.iter(|| renderer.render(std::hint::black_box(&input)))
            });
        }
    }
    bench.finish();
}

criterion_group!(benches, render_benchmarks);
criterion_main!(benches);
