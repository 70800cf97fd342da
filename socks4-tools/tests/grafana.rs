//! The Grafana dashboard (`contrib/grafana/socks4.json`) asks only for metrics the servers expose,
//! and every query is valid PromQL for Prometheus's own `promtool` (skipped with a note when it is
//! missing, unless `SOCKS4_REQUIRE_PROMTOOL` is set).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/socks4.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= panels.len(), "a panel without a query");
    queries
}

/// The metric names in a query: `socks4_` followed by lower-case letters and underscores.
fn names(query: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("socks4_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())).unwrap_or(tail.len());
        found.push(&tail[..end]);
        rest = &tail[end..];
    }
    found
}

#[test]
fn dashboard_queries_name_exposed_metrics() {
    let exposition = socks4_server::metrics::Metrics::new(2, true).encode();
    let exposed: BTreeSet<&str> =
        exposition.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let mut used = BTreeSet::new();
    for query in dashboard_queries() {
        for name in names(&query) {
            assert!(exposed.contains(name), "the dashboard queries {name}, which no server exposes: {query}");
            used.insert(name.trim_end_matches("_bucket").to_owned());
        }
    }
    for wanted in [
        "socks4_requests_total",
        "socks4_active_connections",
        "socks4_worker_connections_total",
        "socks4_relayed_bytes_total",
        "socks4_handshake_duration_seconds",
        "socks4_connect_duration_seconds",
        "socks4_connections_refused_total",
        "socks4_reloads_total",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries().iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules
            .push_str(&format!("      - record: dashboard:query_{i}\n        expr: '{}'\n", query.replace('\'', "''")));
    }
    let file = std::env::temp_dir().join(format!("socks4-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool").arg("check").arg("rules").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    match out {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if std::env::var_os("SOCKS4_REQUIRE_PROMTOOL").is_none() => {
            println!("SKIP dashboard_queries_are_valid_promql: no promtool ({e}); apt-get install prometheus");
        }
        Err(e) => panic!("SOCKS4_REQUIRE_PROMTOOL is set but promtool: {e}"),
    }
}
