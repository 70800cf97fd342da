//! `--check-config`: the effective configuration (the file with the command line on top, every
//! default filled in) written back as a config file, for an operator or a package script to read.
//!
//! ```
//! use socks4_server::{ServerConfig, check::effective_toml, cli::parse_config_toml};
//! let mut config = ServerConfig::default();
//! config.rules = socks4_core::rules::Rules::parse("deny port 25\nallow from 10.0.0.0/8")?;
//! let text = effective_toml(&config);
//! assert!(text.contains("rules = [\"deny port 25\", \"allow from 10.0.0.0/8\"]"), "{text}");
//! assert_eq!(parse_config_toml(&text)?, config, "it reads back as the same config");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Display;

use toml::{Table, Value};

use crate::config::{ServerConfig, format_duration};

/// The config as TOML in the config file's format: reading it back gives the same config.
pub fn effective_toml(config: &ServerConfig) -> String {
    let strings = |items: &mut dyn Iterator<Item = String>| Value::Array(items.map(Value::String).collect());
    let text = |v: &dyn Display| Value::String(v.to_string());
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let mut top = Table::new();
    top.insert("listen".into(), strings(&mut config.listen.iter().map(|a| a.to_string())));
    if let Some(workers) = config.workers {
        top.insert("workers".into(), int(workers as u64));
    }
    top.insert("max_connections".into(), int(config.max_connections as u64));
    top.insert("reuseport".into(), Value::Boolean(config.reuseport));
    top.insert("safe_socks".into(), Value::Boolean(config.safe_socks));
    top.insert("warn_unsafe_socks".into(), Value::Boolean(config.warn_unsafe_socks));
    top.insert("outgoing".into(), strings(&mut config.outgoing.iter().map(|a| a.to_string())));
    if let Some(keepalive) = &config.keepalive {
        top.insert("keepalive".into(), text(keepalive));
    }
    top.insert("log_level".into(), Value::String(config.log_level.clone()));
    let format = match config.log_format {
        crate::log::LogFormat::Text => "text",
        crate::log::LogFormat::Json => "json",
    };
    top.insert("log_format".into(), Value::String(format.into()));
    if let Some(metrics) = config.metrics {
        top.insert("metrics".into(), text(&metrics));
    }
    top.insert("proxy_protocol".into(), strings(&mut config.proxy_protocol.0.iter().map(|n| n.to_string())));
    if let Some(users) = &config.users {
        top.insert("users".into(), Value::String(users.display().to_string()));
    }
    top.insert("rules".into(), strings(&mut config.rules.0.iter().map(|r| r.to_string())));

    let mut limits = Table::new();
    limits.insert("user_id".into(), int(config.limits.user_id.into()));
    limits.insert("host".into(), int(config.limits.host.into()));
    top.insert("limits".into(), Value::Table(limits));

    let t = &config.timeouts;
    let mut timeouts = Table::new();
    for (key, d) in [
        ("handshake", t.handshake),
        ("connect", t.connect),
        ("bind", t.bind),
        ("ident", t.ident),
        ("idle", t.idle),
        ("shutdown_grace", t.shutdown_grace),
    ] {
        timeouts.insert(key.into(), Value::String(format_duration(d)));
    }
    top.insert("timeouts".into(), Value::Table(timeouts));

    let cl = &config.client_limits;
    let mut client_limits = Table::new();
    client_limits.insert("max_per_client".into(), int(cl.max_per_client.into()));
    if let Some(rate) = cl.max_rate_per_client {
        client_limits.insert("max_rate_per_client".into(), text(&rate));
    }
    client_limits.insert("max_handshakes".into(), int(cl.max_handshakes.into()));
    client_limits.insert("max_handshakes_per_client".into(), int(cl.max_handshakes_per_client.into()));
    client_limits.insert("tracked_clients".into(), int(cl.tracked_clients as u64));
    client_limits.insert("max_bind_waits".into(), int(cl.max_bind_waits as u64));
    client_limits.insert("max_bind_waits_per_client".into(), int(cl.max_bind_waits_per_client as u64));
    top.insert("client_limits".into(), Value::Table(client_limits));

    let bw = &config.bandwidth;
    let mut bandwidth = Table::new();
    for (key, cap) in [("conn", bw.conn), ("user", bw.user), ("client", bw.client)] {
        if let Some(cap) = cap {
            bandwidth.insert(key.into(), text(&cap));
        }
    }
    top.insert("bandwidth".into(), Value::Table(bandwidth));

    let n = &config.names;
    let mut names = Table::new();
    names.insert("prefer".into(), text(&n.prefer));
    names.insert("connect_stagger".into(), Value::String(format_duration(n.connect_stagger)));
    names.insert("resolvers".into(), strings(&mut n.resolvers.iter().map(|a| a.to_string())));
    names.insert("cache_entries".into(), int(n.cache_entries as u64));
    for (key, d) in [("min_ttl", n.min_ttl), ("max_ttl", n.max_ttl), ("negative_ttl", n.negative_ttl)] {
        names.insert(key.into(), Value::String(format_duration(d)));
    }
    top.insert("names".into(), Value::Table(names));
    top.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::parse_config_toml;

    #[test]
    fn every_setting_reads_back() {
        let text = r#"
            listen = ["0.0.0.0:1080", "[::1]:1081"]
            workers = 3
            max_connections = 77
            reuseport = true
            safe_socks = true
            warn_unsafe_socks = true
            outgoing = ["127.0.0.2", "::1"]
            keepalive = "60s,10s,5"
            log_level = "debug,socks4_server=trace"
            log_format = "json"
            metrics = "127.0.0.1:9100"
            proxy_protocol = ["10.0.0.0/8", "fd00::/8"]
            users = "/etc/socks4/users"
            rules = ["deny to loopback", "allow from 10.0.0.0/8 port 443 user alice out 127.0.0.3", "deny"]
            [limits]
            user_id = 32
            host = 100
            [timeouts]
            handshake = "1500ms"
            connect = "3s"
            bind = "1m"
            ident = "4s"
            idle = "0s"
            shutdown_grace = "2s"
            [client_limits]
            max_per_client = 5
            max_rate_per_client = "600/m"
            max_handshakes = 0
            max_handshakes_per_client = 7
            tracked_clients = 999
            max_bind_waits = 9
            max_bind_waits_per_client = 2
            [bandwidth]
            conn = "1M"
            client = "12345"
            [names]
            prefer = "resolver"
            connect_stagger = "100ms"
            resolvers = ["127.0.0.1", "[::1]:5353"]
            cache_entries = 10
            min_ttl = "5s"
            max_ttl = "10m"
            negative_ttl = "0s"
        "#;
        let config = parse_config_toml(text).unwrap();
        assert_ne!(config, ServerConfig::default());
        let dumped = effective_toml(&config);
        assert_eq!(parse_config_toml(&dumped).unwrap(), config, "{dumped}");
        let defaults = effective_toml(&ServerConfig::default());
        assert_eq!(parse_config_toml(&defaults).unwrap(), ServerConfig::default(), "{defaults}");
        assert!(defaults.contains("[timeouts]\nhandshake = \"10s\""), "{defaults}");
    }
}
