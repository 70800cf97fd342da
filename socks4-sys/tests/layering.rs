//! Layering: this crate sits under the async driver and the std server, so it must not depend
//! (even transitively) on an async runtime. Checked against the workspace's Cargo.lock (or, in
//! the published package, the crate's own).

use std::collections::{BTreeSet, HashMap};

const FORBIDDEN: &[&str] = &["tokio", "smol", "async-io", "async-std", "async-executor", "async-net", "futures-lite"];

#[test]
fn depends_on_no_async_runtime() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let lock = std::fs::read_to_string(format!("{dir}/../Cargo.lock"))
        .or_else(|_| std::fs::read_to_string(format!("{dir}/Cargo.lock")))
        .expect("Cargo.lock");
    let lock: toml::Table = lock.parse().expect("Cargo.lock is TOML");
    let packages = lock["package"].as_array().expect("[[package]]");
    // name -> dependency names (a lock entry names a dependency "name" or "name version").
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in packages {
        let name = p["name"].as_str().expect("name");
        let list = p.get("dependencies").and_then(|d| d.as_array()).map_or(Vec::new(), |d| {
            d.iter().filter_map(|v| v.as_str()).map(|s| s.split(' ').next().unwrap_or(s)).collect()
        });
        deps.entry(name).or_default().extend(list);
    }
    assert!(deps.contains_key("socks4-sys"), "socks4-sys is in the lock file");
    let mut seen = BTreeSet::new();
    let mut todo = vec!["socks4-sys"];
    while let Some(name) = todo.pop() {
        if seen.insert(name) {
            todo.extend(deps.get(name).into_iter().flatten().copied());
        }
    }
    // The lock file does not tell dev-dependencies apart: they are checked too (stricter).
    let bad: Vec<_> = seen.iter().filter(|n| FORBIDDEN.contains(n)).collect();
    assert!(bad.is_empty(), "socks4-sys depends on {bad:?} (through {seen:?})");
}
