//! The `bench` load generator against a real cluster: its JSON report and its error counts.

mod common;

use std::process::Command;

use common::{Cluster, bin};

fn bench(args: &[&str]) -> String {
    let out = Command::new(bin("bench")).args(args).output().unwrap();
    assert!(out.status.success(), "bench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `"field":` in a flat JSON object.
fn field(json: &str, name: &str) -> f64 {
    let at = json.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("no {name} in {json}")) + name.len() + 3;
    let end = json[at..].find([',', '}']).unwrap() + at;
    json[at..end].parse().unwrap_or_else(|_| panic!("{name} is not a number in {json}"))
}

#[test]
fn json_report_has_every_figure() {
    let c = Cluster::start(4, &[]);
    let file = c.file.to_str().unwrap();
    for extra in
        [&["--read-ratio", "0.5"][..], &["--distribution", "zipf", "--keys", "10-20"], &["--consistency", "all", "--value-size", "1000"]]
    {
        let mut args = vec!["--replicas", file, "--clients", "4", "--ops", "400", "--warmup", "0ms", "--json"];
        args.extend_from_slice(extra);
        let json = bench(&args);
        for f in ["ops_per_sec", "p50_us", "p95_us", "p99_us", "p999_us", "max_us"] {
            assert!(field(&json, f) > 0.0, "{f} in {json}");
        }
        assert!(field(&json, "ops") >= 400.0, "{json}");
        assert!(field(&json, "p50_us") <= field(&json, "p99_us") && field(&json, "p99_us") <= field(&json, "max_us"), "{json}");
        for kind in ["unavailable", "timeout", "connection", "other"] {
            assert_eq!(field(&json, kind), 0.0, "{kind} in {json}");
        }
    }
    let ping = bench(&["ping", "--port", &c.replicas[0].port.to_string(), "--clients", "2", "--ops", "300", "--warmup", "0ms", "--json"]);
    assert!(field(&ping, "ops_per_sec") > 0.0, "{ping}");
}

#[test]
fn errors_are_counted_by_kind() {
    let mut c = Cluster::start(4, &[]);
    c.kill(2);
    c.kill(3);
    c.wait_seen(0, 2, false);
    c.wait_seen(0, 3, false);
    // Keys 64-127 live on r1, r2, r3: QUORUM is unavailable with r2 and r3 down.
    let json = bench(&[
        "--port",
        &c.replicas[0].port.to_string(),
        "--clients",
        "2",
        "--duration",
        "300ms",
        "--warmup",
        "0ms",
        "--keys",
        "64-127",
        "--consistency",
        "quorum",
        "--json",
    ]);
    assert!(field(&json, "unavailable") > 10.0, "{json}");
    assert_eq!(field(&json, "ops"), 0.0, "{json}");
}
