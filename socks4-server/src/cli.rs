//! The command line every adapter's binary shares, and the TOML config-file loader.
//!
//! ```
//! use socks4_server::cli::ServerArgs;
//! let args = ServerArgs::try_parse_from(["socks4", "--listen", "0.0.0.0:1080",
//!     "--deny", "port 25", "--allow", "from 10.0.0.0/8", "--idle-timeout", "1m"])?;
//! let config = args.to_config()?;
//! assert_eq!(config.rules.0[0].to_string(), "deny port 25"); // command-line order is kept
//! assert_eq!(config.timeouts.idle.as_secs(), 60);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::{ConfigError, ServerConfig, parse_duration};
use socks4_core::rules::{Action, Rule};

/// The adapters' shared options. Options given on the command line override the config file.
#[derive(Debug, Clone, Parser)]
#[command(about = "A SOCKS4/SOCKS4a proxy server", version)]
pub struct ServerArgs {
    /// Address to listen on (repeatable; IPv4 or IPv6). Default 127.0.0.1:1080.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// TOML config file (see the README for its keys).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Allow requests matching RULE, e.g. 'from 10.0.0.0/8 port 443' or 'any' (repeatable, in order).
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
    /// Deny requests matching RULE, e.g. 'to 169.254.0.0/16' or 'any' (repeatable, in order).
    #[arg(long, value_name = "RULE")]
    pub deny: Vec<String>,
    /// Time for a client to send its whole request (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub handshake_timeout: Option<Duration>,
    /// Time to resolve a SOCKS4a name and, separately, to connect (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub connect_timeout: Option<Duration>,
    /// BIND: time for the peer to connect (e.g. 2m).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub bind_timeout: Option<Duration>,
    /// Ident (rules with `ident`): time for the client's identd to answer (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub ident_timeout: Option<Duration>,
    /// Close a relay idle in both directions for this long (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, let live relays run this long before closing them (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub shutdown_grace: Option<Duration>,
    /// Most connections at once; more are closed on accept (default 4096).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Longest user id accepted, in bytes (at most 255).
    #[arg(long, value_name = "N")]
    pub max_user_id: Option<u8>,
    /// Longest SOCKS4a host name accepted, in bytes (at most 255).
    #[arg(long, value_name = "N")]
    pub max_host: Option<u8>,
    /// Give each worker its own SO_REUSEPORT listener (Linux) instead of one acceptor.
    #[arg(long)]
    pub reuseport: bool,
    /// Refuse CONNECT requests by IP address: clients must send host names (SOCKS4a), so an
    /// application that resolved the name itself (a DNS leak) is caught and logged, like Tor's SafeSocks.
    #[arg(long)]
    pub safe_socks: bool,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive.
    #[arg(long, value_name = "LEVEL", default_value = "info", env = "SOCKS4_LOG")]
    pub log_level: String,
    /// `--allow`/`--deny` in command-line order.
    #[arg(skip)]
    ordered_rules: Vec<(Action, String)>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

impl ServerArgs {
    /// Parses the process's arguments; prints usage and exits on error, like clap.
    pub fn parse_env() -> Self {
        Self::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses the given arguments (the first is the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut parsed = Self::from_arg_matches(&matches)?;
        let mut ordered = Vec::new();
        for (id, action, values) in [("allow", Action::Allow, &parsed.allow), ("deny", Action::Deny, &parsed.deny)] {
            let indices = matches.indices_of(id).into_iter().flatten();
            ordered.extend(indices.zip(values).map(|(i, v)| (i, action, v.clone())));
        }
        ordered.sort_by_key(|(i, _, _)| *i);
        parsed.ordered_rules = ordered.into_iter().map(|(_, a, v)| (a, v)).collect();
        Ok(parsed)
    }

    /// The config: the file's (if any) with the command line's options on top, validated.
    pub fn to_config(&self) -> Result<ServerConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_config_file(path)?,
            None => ServerConfig::default(),
        };
        if !self.listen.is_empty() {
            config.listen.clone_from(&self.listen);
        }
        config.workers = self.workers.or(config.workers);
        config.max_connections = self.max_connections.unwrap_or(config.max_connections);
        config.reuseport |= self.reuseport;
        config.safe_socks |= self.safe_socks;
        config.limits.user_id = self.max_user_id.unwrap_or(config.limits.user_id);
        config.limits.host = self.max_host.unwrap_or(config.limits.host);
        let t = &mut config.timeouts;
        for (value, slot) in [
            (self.handshake_timeout, &mut t.handshake),
            (self.connect_timeout, &mut t.connect),
            (self.bind_timeout, &mut t.bind),
            (self.ident_timeout, &mut t.ident),
            (self.idle_timeout, &mut t.idle),
            (self.shutdown_grace, &mut t.shutdown_grace),
        ] {
            *slot = value.unwrap_or(*slot);
        }
        for (action, text) in &self.ordered_rules {
            config.rules.0.push(cli_rule(*action, text)?);
        }
        config.validate()?;
        Ok(config)
    }
}

/// What an adapter's server offers the shared [`main`].
pub trait Serve: Sized {
    /// Binds the listeners of a validated config.
    fn bind(config: ServerConfig) -> std::io::Result<Self>;
    /// The addresses actually bound.
    fn local_addrs(&self) -> Vec<SocketAddr>;
    /// Serves until SIGINT/SIGTERM, then shuts down gracefully.
    fn run(self) -> std::io::Result<()>;
}

/// The whole `main` of an adapter's binary: parse the shared command line, set up logging
/// (`--log-level`, to stderr, coloured only on a terminal), build and validate the config (exit status 2 with the reason if it is bad, e.g.
/// an open proxy), bind, log the listen addresses, and serve until SIGINT/SIGTERM.
///
/// ```no_run
/// # struct MyServer;
/// # impl socks4_server::cli::Serve for MyServer {
/// #     fn bind(_: socks4_server::ServerConfig) -> std::io::Result<Self> { Ok(MyServer) }
/// #     fn local_addrs(&self) -> Vec<std::net::SocketAddr> { Vec::new() }
/// #     fn run(self) -> std::io::Result<()> { Ok(()) }
/// # }
/// fn main() -> std::process::ExitCode {
///     socks4_server::cli::main::<MyServer>("my-socks4")
/// }
/// ```
pub fn main<S: Serve>(name: &str) -> ExitCode {
    let args = ServerArgs::parse_env();
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match S::bind(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{name}: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in server.local_addrs() {
        tracing::info!("{name} listening on {addr}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One `--allow`/`--deny` value: the conditions of a rule, or `any`.
fn cli_rule(action: Action, conditions: &str) -> Result<Rule, ConfigError> {
    Ok(format!("{action} {}", conditions.trim()).parse::<Rule>()?)
}

/// Reads and parses a TOML config file (not yet validated).
pub fn load_config_file(path: &std::path::Path) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
    parse_config_toml(&text).map_err(|e| match e {
        ConfigError::File(msg) => ConfigError::File(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Parses a TOML config text (not yet validated).
///
/// ```
/// let config = socks4_server::cli::parse_config_toml("listen = ['[::1]:1080']\n[timeouts]\nidle = '30s'\n")?;
/// assert_eq!(config.timeouts.idle.as_secs(), 30);
/// # Ok::<(), socks4_server::config::ConfigError>(())
/// ```
pub fn parse_config_toml(text: &str) -> Result<ServerConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::File(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let mut all = vec!["socks4"];
        all.extend_from_slice(args);
        ServerArgs::try_parse_from(all).unwrap().to_config()
    }

    #[test]
    fn defaults_are_safe() {
        let c = config(&[]).unwrap();
        assert_eq!(c, ServerConfig::default());
        assert!(c.listen[0].ip().is_loopback());
    }

    #[test]
    fn options_override_and_rules_keep_order() {
        let c = config(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--workers",
            "3",
            "--allow",
            "user a",
            "--deny",
            "any",
            "--allow",
            "port 80",
            "--max-connections",
            "7",
            "--max-user-id",
            "9",
            "--max-host",
            "10",
            "--handshake-timeout",
            "1s",
            "--connect-timeout",
            "2s",
            "--bind-timeout",
            "3s",
            "--shutdown-grace",
            "4s",
            "--reuseport",
            "--safe-socks",
        ])
        .unwrap();
        assert!(c.safe_socks);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.workers, Some(3));
        let texts: Vec<String> = c.rules.0.iter().map(|r| r.to_string()).collect();
        assert_eq!(texts, ["allow user a", "deny", "allow port 80"]);
        assert_eq!((c.max_connections, c.limits.user_id, c.limits.host, c.reuseport), (7, 9, 10, true));
        let t = c.timeouts;
        assert_eq!([t.handshake, t.connect, t.bind, t.shutdown_grace].map(|d| d.as_secs()), [1, 2, 3, 4]);
    }

    #[test]
    fn refusals_and_errors() {
        assert!(matches!(config(&["--listen", "0.0.0.0:1080"]), Err(ConfigError::OpenProxy(_))));
        assert!(config(&["--listen", "0.0.0.0:1080", "--allow", "from 10.0.0.0/8"]).is_ok());
        assert!(matches!(config(&["--allow", "from nowhere"]), Err(ConfigError::Rule(_))));
        assert!(ServerArgs::try_parse_from(["socks4", "--idle-timeout", "soon"]).is_err());
        assert!(ServerArgs::try_parse_from(["socks4", "--max-user-id", "256"]).is_err());
        let missing = config(&["--config", "/nonexistent/socks4.toml"]).unwrap_err();
        assert!(format!("{missing}").contains("/nonexistent/socks4.toml"));
    }

    #[test]
    fn toml_file() {
        let text = r#"
            listen = ["0.0.0.0:1080"]
            workers = 2
            max_connections = 100
            rules = ["deny to 169.254.0.0/16", "allow from 10.0.0.0/8"]
            safe_socks = true
            [limits]
            user_id = 32
            [timeouts]
            handshake = "3s"
            connect = 4
            bind = 1.5
            idle = "10m"
        "#;
        let c = parse_config_toml(text).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.workers, c.max_connections, c.limits.user_id, c.limits.host), (Some(2), 100, 32, 255));
        assert_eq!(c.rules.0.len(), 2);
        assert_eq!(c.timeouts.bind, Duration::from_millis(1500));
        assert_eq!(c.timeouts.idle, Duration::from_secs(600));
        assert_eq!(c.timeouts.connect, Duration::from_secs(4));
        assert!(c.safe_socks);
        assert!(parse_config_toml("rules = [\"allow port x\"]").is_err());
        assert!(parse_config_toml("listen = 5").is_err());
        assert!(parse_config_toml("unknown_key = 1").is_err());
        assert!(parse_config_toml("[timeouts]\nidle = -1").is_err());
        let dir = std::env::temp_dir().join(format!("socks4-server-test-{}.toml", std::process::id()));
        std::fs::write(&dir, "workers = 5\n").unwrap();
        let from_file = config(&["--config", dir.to_str().unwrap(), "--workers", "6"]).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(from_file.workers, Some(6), "the command line wins over the file");
    }
}
