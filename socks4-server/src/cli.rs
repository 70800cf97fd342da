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

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::bandwidth::RateLimit;
use crate::config::{ConfigError, ServerConfig, parse_duration};
use crate::limits::ConnRate;
use crate::users::{self, Users};
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

    // --- Abuse limits, bandwidth caps, authentication. ---
    /// Most connections open at once from one client (IPv4 address or IPv6 /64); 0 = no limit
    /// (default 1024).
    #[arg(long, value_name = "N")]
    pub max_per_client: Option<u32>,
    /// Most new connections per client, e.g. 20/s or 600/m (token bucket, burst N; default: no limit).
    #[arg(long, value_name = "N/s", value_parser = conn_rate)]
    pub max_rate_per_client: Option<ConnRate>,
    /// Most connections in their handshake, whole server; 0 = no limit (default 1024).
    #[arg(long, value_name = "N")]
    pub max_handshakes: Option<u32>,
    /// Bandwidth cap of each connection, each direction, e.g. 10M or 512K (bytes/s, K = 1024).
    /// Not enforced yet: the --rate-limit-* options make the server refuse to start.
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate)]
    pub rate_limit_conn: Option<RateLimit>,
    /// Bandwidth cap of each user id, all its connections together, each direction (bytes/s).
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate)]
    pub rate_limit_user: Option<RateLimit>,
    /// Bandwidth cap of each client address (IPv6: /64), all its connections together (bytes/s).
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate)]
    pub rate_limit_client: Option<RateLimit>,
    /// Users file: user ids must then be NAME:TOKEN, the token matching NAME's Argon2id hash in FILE
    /// (lines from the `hash-token` subcommand).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `--allow`/`--deny` in command-line order.
    #[arg(skip)]
    ordered_rules: Vec<(Action, String)>,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

// --- Abuse limits, bandwidth caps, authentication. ---

/// What the binary does instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Read a token from standard input (one line) and print the users-file line for it,
    /// NAME:$argon2id$..., e.g. `head -c 18 /dev/urandom | base64 | tee token | socks4-tokio hash-token alice`.
    HashToken {
        /// The user's name: 1 to 64 of A-Z a-z 0-9 . _ - @ +.
        name: String,
    },
}

fn conn_rate(s: &str) -> Result<ConnRate, String> {
    s.parse().map_err(|e: crate::limits::BadRate| e.to_string())
}

fn byte_rate(s: &str) -> Result<RateLimit, String> {
    s.parse().map_err(|e: crate::bandwidth::BadByteRate| e.to_string())
}

/// Tokens shorter than this get a warning: they are secrets, guessed online at the verifier's pace.
const SHORT_TOKEN: usize = 16;

/// The `hash-token NAME` subcommand: reads the token (one line; the line end is not part of it)
/// from `input`, writes the users-file line `NAME:$argon2id$...` to `out`, and any warning to `err`.
/// Reading stdin rather than an argument keeps the token out of shell history and `ps`.
///
/// ```
/// use socks4_server::cli::hash_token_command;
/// let (mut out, mut err) = (Vec::new(), Vec::new());
/// hash_token_command("alice", &mut &b"a-long-random-token-0123\n"[..], &mut out, &mut err)?;
/// let line = String::from_utf8(out).unwrap();
/// assert!(line.starts_with("alice:$argon2id$v=19$m=19456,t=2,p=1$"), "{line}");
/// assert!(hash_token_command("alice", &mut &b"\n"[..], &mut Vec::new(), &mut err).is_err());
/// # Ok::<(), String>(())
/// ```
pub fn hash_token_command(
    name: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), String> {
    if !users::valid_name(name.as_bytes()) {
        return Err(format!("bad user name `{name}`: 1 to {} of A-Z a-z 0-9 . _ - @ +", users::MAX_NAME));
    }
    let mut line = Vec::new();
    std::io::Read::take(input, 1024).read_until(b'\n', &mut line).map_err(|e| format!("cannot read the token: {e}"))?;
    let token = line.strip_suffix(b"\n").unwrap_or(&line);
    let token = token.strip_suffix(b"\r").unwrap_or(token);
    if token.is_empty() {
        return Err("no token on standard input".into());
    }
    if token.contains(&0) {
        return Err("the token contains a NUL byte, which a SOCKS4 user id cannot carry".into());
    }
    let user_id_len = name.len() + 1 + token.len();
    if user_id_len > usize::from(u8::MAX) {
        return Err(format!("NAME:TOKEN is {user_id_len} bytes; a SOCKS4 user id is at most 255"));
    }
    if token.len() < SHORT_TOKEN {
        let _ = writeln!(err, "warning: a token shorter than {SHORT_TOKEN} bytes is easy to guess");
    }
    let phc = users::hash_token(token).map_err(|e| format!("cannot hash the token: {e}"))?;
    writeln!(out, "{name}:{phc}").map_err(|e| format!("cannot write: {e}"))
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
        // --- Abuse limits, bandwidth caps, authentication. ---
        let cl = &mut config.client_limits;
        cl.max_per_client = self.max_per_client.unwrap_or(cl.max_per_client);
        cl.max_rate_per_client = self.max_rate_per_client.or(cl.max_rate_per_client);
        cl.max_handshakes = self.max_handshakes.unwrap_or(cl.max_handshakes);
        let bw = &mut config.bandwidth;
        bw.conn = self.rate_limit_conn.or(bw.conn);
        bw.user = self.rate_limit_user.or(bw.user);
        bw.client = self.rate_limit_client.or(bw.client);
        if self.users.is_some() {
            config.users.clone_from(&self.users);
        }
        config.validate()?;
        // A bad users file stops the server here, with the line number (the adapter loads it again).
        if let Some(path) = &config.users {
            Users::load(path)?;
        }
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
    // --- Subcommands. ---
    if let Some(Command::HashToken { name: user }) = &args.command {
        let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        if std::io::IsTerminal::is_terminal(&stdin) {
            eprintln!("token for {user} (one line; it is echoed):");
        }
        return match hash_token_command(user, &mut stdin.lock(), &mut stdout.lock(), &mut stderr.lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name} hash-token: {e}");
                ExitCode::from(2)
            }
        };
    }
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

/// Reads and parses a TOML config file (not yet validated). A relative `users` path in it is
/// taken relative to the file's directory.
pub fn load_config_file(path: &std::path::Path) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
    let mut config = parse_config_toml(&text).map_err(|e| match e {
        ConfigError::File(msg) => ConfigError::File(format!("{}: {msg}", path.display())),
        other => other,
    })?;
    // --- Authentication: the users file sits beside the config file. ---
    if let (Some(users), Some(dir)) = (&mut config.users, path.parent()) {
        if users.is_relative() {
            *users = dir.join(&*users);
        }
    }
    Ok(config)
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
    fn routes_on_the_command_line_and_in_the_file() {
        let c = config(&["--allow", "to *.onion via socks4a://127.0.0.1:9050", "--allow", "from 127.0.0.0/8"]).unwrap();
        assert_eq!(c.rules.0[0].to_string(), "allow to *.onion via socks4a://127.0.0.1:9050");
        assert!(c.rules.has_routes());
        let file = parse_config_toml(
            r#"rules = ["allow to 10.0.0.0/8 via socks4://bastion:1080,socks4://[::1]:1080 as relay", "deny any"]"#,
        )
        .unwrap();
        let route = file.rules.0[0].route.as_ref().unwrap();
        assert_eq!((route.parents.len(), route.user.as_deref()), (2, Some("relay")));
        assert!(matches!(config(&["--deny", "via socks4://h:1"]), Err(ConfigError::Rule(_))));
        assert!(matches!(config(&["--allow", "via http://h:1"]), Err(ConfigError::Rule(_))));
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

    // --- Abuse limits, bandwidth caps, authentication. ---

    #[test]
    fn limit_flags_and_defaults() {
        let d = config(&[]).unwrap();
        assert_eq!((d.client_limits.max_per_client, d.client_limits.max_handshakes), (1024, 1024));
        assert_eq!(d.client_limits.max_rate_per_client, None);
        assert!(d.bandwidth.is_off() && d.users.is_none());
        let c = config(&["--max-per-client", "16", "--max-rate-per-client", "20/s", "--max-handshakes", "0"]).unwrap();
        let cl = c.client_limits;
        assert_eq!((cl.max_per_client, cl.max_handshakes), (16, 0));
        assert_eq!(cl.max_rate_per_client, Some("20/s".parse().unwrap()));
        let caps =
            ["socks4", "--rate-limit-conn", "10M", "--rate-limit-user", "512K", "--rate-limit-client", "1000000"];
        let args = ServerArgs::try_parse_from(caps).unwrap();
        assert_eq!(args.rate_limit_conn.map(|r| r.bytes_per_sec()), Some(10 << 20));
        assert_eq!(args.rate_limit_user.map(|r| r.bytes_per_sec()), Some(512 << 10));
        assert_eq!(args.rate_limit_client.map(|r| r.bytes_per_sec()), Some(1_000_000));
        // No relay applies them yet: a server must refuse to start rather than pretend.
        assert!(matches!(args.to_config(), Err(ConfigError::Unsupported(_))));
        for bad in [
            &["--max-rate-per-client", "fast"][..],
            &["--rate-limit-conn", "0"],
            &["--rate-limit-user", "1T"],
            &["--max-per-client", "-1"],
        ] {
            let mut all = vec!["socks4"];
            all.extend_from_slice(bad);
            assert!(ServerArgs::try_parse_from(all).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limit_tables_in_the_file() {
        let c = parse_config_toml(
            r#"
            users = "/etc/socks4/users"
            [client_limits]
            max_per_client = 8
            max_rate_per_client = "600/m"
            max_handshakes = 100
            tracked_clients = 1000
            [bandwidth]
            conn = "1M"
            user = 65536
            "#,
        )
        .unwrap();
        assert_eq!(c.client_limits.max_per_client, 8);
        assert_eq!(c.client_limits.max_rate_per_client.map(|r| r.to_string()).as_deref(), Some("600/m"));
        assert_eq!((c.client_limits.max_handshakes, c.client_limits.tracked_clients), (100, 1000));
        assert_eq!(c.bandwidth.conn.map(|r| r.to_string()).as_deref(), Some("1M"));
        assert_eq!(c.bandwidth.user.map(|r| r.bytes_per_sec()), Some(65536));
        assert_eq!(c.bandwidth.client, None);
        assert_eq!(c.users.as_deref(), Some(std::path::Path::new("/etc/socks4/users")));
        for bad in [
            "[client_limits]\nmax_per_connection = 1",
            "[client_limits]\nmax_rate_per_client = \"0/s\"",
            "[bandwidth]\nconn = \"fast\"",
            "[bandwidth]\nup = \"1M\"",
            "[client_limits]\ntracked_clients = -1",
        ] {
            assert!(parse_config_toml(bad).is_err(), "{bad}");
        }
        let zero = parse_config_toml("[client_limits]\ntracked_clients = 0").unwrap();
        assert_eq!(zero.validate(), Err(ConfigError::Zero("client_limits.tracked_clients")));
    }

    #[test]
    fn users_file_is_checked_and_relative_to_the_config_file() {
        let dir = std::env::temp_dir().join(format!("socks4-server-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let phc = users::hash_token_with(b"t", argon2::Params::new(8, 1, 1, None).unwrap()).unwrap();
        std::fs::write(dir.join("users"), format!("alice:{phc}\n")).unwrap();
        std::fs::write(dir.join("bad-users"), "# ok\nalice:{phc}\n").unwrap();
        std::fs::write(dir.join("socks4.toml"), "users = \"users\"\n").unwrap();
        let toml = dir.join("socks4.toml");
        let c = config(&["--config", toml.to_str().unwrap()]).unwrap();
        assert_eq!(c.users.as_deref(), Some(dir.join("users").as_path()));
        let verifier = c.verifier().unwrap().unwrap();
        assert_eq!(verifier.verify_blocking(b"alice:t"), Ok(()));
        let bad = dir.join("bad-users");
        let e = config(&["--users", bad.to_str().unwrap()]).unwrap_err();
        assert!(matches!(&e, ConfigError::Users(u) if u.line == 2), "{e}");
        assert!(e.to_string().starts_with("users file: line 2: "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(config(&["--users", "/nonexistent/users"]), Err(ConfigError::Users(_))));
    }

    #[test]
    fn hash_token_subcommand() {
        let args = ServerArgs::try_parse_from(["socks4", "hash-token", "alice"]).unwrap();
        assert!(matches!(&args.command, Some(Command::HashToken { name }) if name == "alice"));
        assert!(ServerArgs::try_parse_from(["socks4", "hash-token"]).is_err(), "the name is required");
        let run = |name: &str, input: &[u8]| {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let r = hash_token_command(name, &mut &input[..], &mut out, &mut err);
            (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let (r, out, err) = run("alice", b"short\r\nsecond line ignored\n");
        assert_eq!(r, Ok(()));
        assert!(err.contains("shorter than 16"), "{err}");
        let users = Users::parse(out.as_bytes()).unwrap();
        assert_eq!(users.users()[0].name(), "alice");
        let v = crate::users::Verifier::new(users);
        assert_eq!(v.verify_blocking(b"alice:short"), Ok(()), "the line end is not part of the token");
        let (r, _, err) = run("bob", b"0123456789abcdefXYZ");
        assert_eq!((r, err.as_str()), (Ok(()), ""), "no newline at the end is fine");
        assert!(run("bad name", b"token\n").0.unwrap_err().contains("bad user name"));
        assert!(run("alice", b"").0.unwrap_err().contains("no token"));
        assert!(run("alice", b"a\0b\n").0.unwrap_err().contains("NUL"));
        assert!(run("alice", &[b'x'; 300]).0.unwrap_err().contains("at most 255"));
    }
}
