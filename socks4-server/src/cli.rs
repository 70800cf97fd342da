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
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use std::sync::Arc;

use crate::bandwidth::RateLimit;
use crate::check::effective_toml;
use crate::config::{ConfigError, ServerConfig, parse_duration};
use crate::keepalive::Keepalive;
use crate::limits::ConnRate;
use crate::log::LogFormat;
use crate::manual;
use crate::metrics::Endpoint;
use crate::reload::{Change, LiveConfig};
use crate::systemd;
use crate::users::{self, Users};

use crate::config_file::{config_from_text, read_config_file};
pub use crate::config_file::{load_config_file, parse_config_toml};
pub use crate::serve::{Running, Serve};
use socks4_core::rules::{Action, IpNet, Rule};

/// The adapters' shared options. Options given on the command line override the config file.
#[derive(Debug, Clone, Parser)]
#[command(about = "A SOCKS4/SOCKS4a proxy server", version)]
pub struct ServerArgs {
    /// Address to listen on (repeatable; IPv4 or IPv6). Default 127.0.0.1:1080.
    #[arg(long, value_name = "ADDR", env = "SOCKS4_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N", env = "SOCKS4_WORKERS")]
    pub workers: Option<usize>,
    /// TOML config file (see the README for its keys).
    #[arg(long, value_name = "FILE", env = "SOCKS4_CONFIG")]
    pub config: Option<PathBuf>,
    /// Allow requests matching RULE, e.g. 'from 10.0.0.0/8 port 443' or 'any' (repeatable, in order).
    #[arg(long, value_name = "RULE", env = "SOCKS4_ALLOW", value_delimiter = ';')]
    pub allow: Vec<String>,
    /// Deny requests matching RULE, e.g. 'to 169.254.0.0/16' or 'any' (repeatable, in order).
    #[arg(long, value_name = "RULE", env = "SOCKS4_DENY", value_delimiter = ';')]
    pub deny: Vec<String>,
    /// Time for a client to send its whole request (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<Duration>,
    /// Time to resolve a SOCKS4a name and, separately, to connect (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<Duration>,
    /// BIND: time for the peer to connect (e.g. 2m).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_BIND_TIMEOUT")]
    pub bind_timeout: Option<Duration>,
    /// Ident (rules with `ident`): time for the client's identd to answer (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_IDENT_TIMEOUT")]
    pub ident_timeout: Option<Duration>,
    /// Close a relay idle in both directions for this long (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_IDLE_TIMEOUT")]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, let live relays run this long before closing them (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = duration, env = "SOCKS4_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<Duration>,
    /// Most connections at once; more are closed on accept (default 4096).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Longest user id accepted, in bytes (at most 255).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_USER_ID")]
    pub max_user_id: Option<u8>,
    /// Longest SOCKS4a host name accepted, in bytes (at most 255).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_HOST")]
    pub max_host: Option<u8>,
    /// Give each worker its own SO_REUSEPORT listener (Linux) instead of one acceptor.
    #[arg(long, env = "SOCKS4_REUSEPORT")]
    pub reuseport: bool,
    /// Refuse CONNECT requests by IP address: clients must send host names (SOCKS4a), so an
    /// application that resolved the name itself (a DNS leak) is caught and logged, like Tor's SafeSocks.
    #[arg(long, env = "SOCKS4_SAFE_SOCKS")]
    pub safe_socks: bool,
    /// Let CONNECT requests by IP address through but log them at warn level (once per client a
    /// minute, at most 10 lines a second): the applications --safe-socks would refuse, found
    /// without breaking them.
    #[arg(long, env = "SOCKS4_WARN_UNSAFE_SOCKS")]
    pub warn_unsafe_socks: bool,
    /// Source address of outgoing connections (repeatable, IPv4 and IPv6; several rotate; one of
    /// the other family than the destination's is skipped). A rule's `out` wins over it.
    #[arg(long, value_name = "ADDR", env = "SOCKS4_OUTGOING", value_delimiter = ',')]
    pub outgoing: Vec<IpAddr>,
    /// TCP keepalive on both sockets of each relay: IDLE, or IDLE,INTERVAL,COUNT, e.g. 60s or 60s,10s,5
    /// (default: off).
    #[arg(long, value_name = "IDLE[,INTERVAL,COUNT]", value_parser = keepalive, env = "SOCKS4_KEEPALIVE")]
    pub keepalive: Option<Keepalive>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive (default: the
    /// file's `log_level`, else info).
    #[arg(long, value_name = "LEVEL", default_value = "info", env = "SOCKS4_LOG")]
    pub log_level: String,
    /// Log format: `text` lines, or `json`, one object per event (a connection's has the text
    /// line's fields).
    #[arg(long, value_name = "FORMAT", value_enum, env = "SOCKS4_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics at http://ADDR/metrics, and /healthz, /readyz (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR", env = "SOCKS4_METRICS")]
    pub metrics: Option<SocketAddr>,

    // --- Abuse limits, bandwidth caps, authentication. ---
    /// Most connections open at once from one client (IPv4 address or IPv6 /64); 0 = no limit
    /// (default 1024).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_PER_CLIENT")]
    pub max_per_client: Option<u32>,
    /// Most new connections per client, e.g. 20/s or 600/m (token bucket, burst N; default: no limit).
    #[arg(long, value_name = "N/s", value_parser = conn_rate, env = "SOCKS4_MAX_RATE_PER_CLIENT")]
    pub max_rate_per_client: Option<ConnRate>,
    /// Most connections in their handshake, whole server; 0 = no limit (default 1024).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_HANDSHAKES")]
    pub max_handshakes: Option<u32>,
    /// Most connections in their handshake at once from one client; 0 = no limit (default 64).
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_client: Option<u32>,
    /// Most BIND requests waiting for their peer at once, whole server; 0 = no limit (default 64).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_BIND_WAITS")]
    pub max_bind_waits: Option<u32>,
    /// Most BIND requests waiting for their peer at once from one client; 0 = no limit (default 8).
    #[arg(long, value_name = "N", env = "SOCKS4_MAX_BIND_WAITS_PER_CLIENT")]
    pub max_bind_waits_per_client: Option<u32>,
    /// Bandwidth cap of each connection, each direction, e.g. 10M or 512K (bytes/s, K = 1024).
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate, env = "SOCKS4_RATE_LIMIT_CONN")]
    pub rate_limit_conn: Option<RateLimit>,
    /// Bandwidth cap of each user id, all its connections together, each direction (bytes/s).
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate, env = "SOCKS4_RATE_LIMIT_USER")]
    pub rate_limit_user: Option<RateLimit>,
    /// Bandwidth cap of each client address (IPv6: /64), all its connections together (bytes/s).
    #[arg(long, value_name = "BYTES/s", value_parser = byte_rate, env = "SOCKS4_RATE_LIMIT_CLIENT")]
    pub rate_limit_client: Option<RateLimit>,
    /// Users file: user ids must then be NAME:TOKEN, the token matching NAME's Argon2id hash in FILE
    /// (lines from the `hash-token` subcommand).
    #[arg(long, value_name = "FILE", env = "SOCKS4_USERS")]
    pub users: Option<PathBuf>,
    /// Connections from CIDR (a load balancer; repeatable) must start with a PROXY protocol header
    /// (v1 or v2), whose client address rules, limits and logs then use.
    #[arg(long, value_name = "CIDR", value_parser = network, env = "SOCKS4_PROXY_PROTOCOL", value_delimiter = ',')]
    pub proxy_protocol: Vec<IpNet>,

    // --- Names: Happy Eyeballs and our own resolver. ---
    /// The family a SOCKS4a name's addresses start with: ipv6 (the default, as RFC 8305), ipv4,
    /// or resolver (the resolver's order); the families then alternate.
    #[arg(long, value_name = "FAMILY", value_enum, env = "SOCKS4_PREFER")]
    pub prefer: Option<crate::eyeballs::Prefer>,
    /// Happy Eyeballs: start connecting to a name's next address after this long without an
    /// answer (default 250ms; 0 tries them all at once).
    #[arg(long, alias = "happy-eyeballs-delay", value_name = "DURATION", value_parser = duration, env = "SOCKS4_CONNECT_STAGGER")]
    pub connect_stagger: Option<Duration>,
    /// Ask this name server for SOCKS4a names instead of the system's resolver (repeatable;
    /// ADDR or ADDR:PORT, port 53 by default; UDP, TCP when an answer is truncated), with a
    /// cache honouring TTLs.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = resolver, env = "SOCKS4_RESOLVER", value_delimiter = ',')]
    pub resolver: Vec<SocketAddr>,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    // --- Operations: reload, check, systemd. ---
    /// Check the config file and the command line, print the effective configuration (as a
    /// config file) and exit: 0 if it is valid, 2 with the reason if not. Binds nothing.
    #[arg(long, env = "SOCKS4_CHECK_CONFIG")]
    pub check_config: bool,

    // --- Packaging: hidden, for the man page and completions of the binary (`manual`). ---
    /// Print the binary's man page (roff) and exit.
    #[arg(long, hide = true)]
    generate_man: bool,
    /// Print the binary's completion script for SHELL (bash, zsh, fish, elvish, powershell) and exit.
    #[arg(long, hide = true, value_name = "SHELL", value_enum)]
    generate_completions: Option<manual::Shell>,

    /// `--allow`/`--deny` in command-line order.
    #[arg(skip)]
    ordered_rules: Vec<(Action, String)>,
    /// `--log-level` (or `SOCKS4_LOG`) was given, rather than defaulted: it then wins over the file.
    #[arg(skip)]
    log_level_given: bool,
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

fn keepalive(s: &str) -> Result<Keepalive, String> {
    s.parse().map_err(|e: crate::keepalive::BadKeepalive| e.to_string())
}

fn resolver(s: &str) -> Result<SocketAddr, String> {
    crate::config::parse_resolver(s).map_err(|e| e.to_string())
}

fn network(s: &str) -> Result<IpNet, String> {
    s.parse().map_err(|e: socks4_core::rules::RuleError| e.to_string())
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
///
/// # Errors
///
/// A message for the user: a bad user name, no token (or one with a NUL) on `input`, a `NAME:TOKEN`
/// over 255 bytes, or a failure to read, hash or write.
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
    ///
    /// # Errors
    ///
    /// clap's error for an unknown option, a missing or bad value (from a flag or its `SOCKS4_*`
    /// variable), or `--help` / `--version` (whose "error" is the text to print: use
    /// [`clap::Error::exit`]).
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_with(Self::command(), args)
    }

    /// [`try_parse_from`](Self::try_parse_from) with `command` (the shared one, renamed for a binary).
    fn try_parse_with<I, T>(command: clap::Command, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = command.try_get_matches_from(args)?;
        let mut parsed = Self::from_arg_matches(&matches)?;
        let mut ordered = Vec::new();
        for (id, action, values) in [("allow", Action::Allow, &parsed.allow), ("deny", Action::Deny, &parsed.deny)] {
            // Rules from the environment (`SOCKS4_ALLOW`, `SOCKS4_DENY`) come after the command
            // line's, and `SOCKS4_DENY`'s before `SOCKS4_ALLOW`'s: two variables have no order, and
            // deny first is the safe one. Within one variable, its order is kept.
            let from_env = matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable);
            let key = |i: usize| if from_env { (1, u8::from(matches!(action, Action::Allow)), i) } else { (0, 0, i) };
            let indices: Vec<usize> = if from_env {
                (0..values.len()).collect()
            } else {
                matches.indices_of(id).into_iter().flatten().collect()
            };
            ordered.extend(indices.into_iter().zip(values).map(|(i, v)| (key(i), action, v.clone())));
        }
        ordered.sort_by_key(|(key, _, _)| *key);
        parsed.ordered_rules = ordered.into_iter().map(|(_, a, v)| (a, v)).collect();
        parsed.log_level_given =
            matches.value_source("log_level").is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
        Ok(parsed)
    }

    /// The config: the file's (if any) with the command line's options on top, validated.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`]s of [`to_config_activated`](Self::to_config_activated).
    pub fn to_config(&self) -> Result<ServerConfig, ConfigError> {
        self.to_config_activated(None)
    }

    /// Like [`to_config`](Self::to_config), for a server whose listeners came from socket
    /// activation (`activated`: their addresses): those replace the listen addresses (and turn
    /// `reuseport` off) before the checks, so an activated socket beyond loopback needs rules too.
    /// Reading the file again and calling this is also what a reload does: the command line still
    /// wins over the file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the config file cannot be read or parsed, a command-line rule does not
    /// parse, the merged config fails [`ServerConfig::validate`], or its users file cannot be
    /// loaded.
    pub fn to_config_activated(&self, activated: Option<&[SocketAddr]>) -> Result<ServerConfig, ConfigError> {
        let config = self.merged(activated)?;
        config.validate()?;
        // A bad users file stops the server here, with the line number (the adapter loads it again).
        if let Some(path) = &config.users {
            Users::load(path)?;
        }
        Ok(config)
    }

    /// The file's config with the command line's options on top, not yet validated.
    fn merged(&self, activated: Option<&[SocketAddr]>) -> Result<ServerConfig, ConfigError> {
        let text = self.config.as_deref().map(read_config_file).transpose()?;
        self.merged_text(text.as_deref(), activated)
    }

    /// Like [`merged`](Self::merged), with the config file's text already read.
    fn merged_text(&self, text: Option<&str>, activated: Option<&[SocketAddr]>) -> Result<ServerConfig, ConfigError> {
        let mut config = match (&self.config, text) {
            (Some(path), Some(text)) => config_from_text(path, text)?,
            _ => ServerConfig::default(),
        };
        if !self.listen.is_empty() {
            config.listen.clone_from(&self.listen);
        }
        config.workers = self.workers.or(config.workers);
        config.max_connections = self.max_connections.unwrap_or(config.max_connections);
        config.reuseport |= self.reuseport;
        config.safe_socks |= self.safe_socks;
        config.warn_unsafe_socks |= self.warn_unsafe_socks;
        if !self.outgoing.is_empty() {
            config.outgoing.clone_from(&self.outgoing);
        }
        config.keepalive = self.keepalive.or(config.keepalive);
        config.metrics = self.metrics.or(config.metrics);
        config.log_format = self.log_format.unwrap_or(config.log_format);
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
        cl.max_handshakes_per_client = self.max_handshakes_per_client.unwrap_or(cl.max_handshakes_per_client);
        cl.max_bind_waits = self.max_bind_waits.unwrap_or(cl.max_bind_waits);
        cl.max_bind_waits_per_client = self.max_bind_waits_per_client.unwrap_or(cl.max_bind_waits_per_client);
        let bw = &mut config.bandwidth;
        bw.conn = self.rate_limit_conn.or(bw.conn);
        bw.user = self.rate_limit_user.or(bw.user);
        bw.client = self.rate_limit_client.or(bw.client);
        if self.users.is_some() {
            config.users.clone_from(&self.users);
        }
        // --- PROXY protocol. ---
        config.proxy_protocol.0.extend_from_slice(&self.proxy_protocol);
        // --- Names. ---
        config.names.prefer = self.prefer.unwrap_or(config.names.prefer);
        config.names.connect_stagger = self.connect_stagger.unwrap_or(config.names.connect_stagger);
        if !self.resolver.is_empty() {
            config.names.resolvers.clone_from(&self.resolver);
        }
        // --- Operations. ---
        if self.log_level_given {
            config.log_level.clone_from(&self.log_level);
        }
        if let Some(addrs) = activated {
            config.listen = addrs.to_vec();
            config.reuseport = false;
        }
        Ok(config)
    }
}

/// The whole `main` of an adapter's binary: parse the shared command line (named `name`: its
/// `--version`, usage and errors say the binary's name); `hash-token`, `--check-config` and the
/// hidden `--generate-man` / `--generate-completions SHELL` (the man page and shell completions of
/// the binary, for packaging) print and exit; otherwise build and validate the config (exit status
/// 2 with the reason if it is bad, e.g. an open proxy), take the listeners from systemd socket
/// activation or bind them, set up logging (`--log-level`, `--log-format`, to stderr, coloured only on a
/// terminal), log the listen addresses, serve the metrics endpoint (`--metrics`), tell systemd it
/// is ready, then serve: `SIGHUP` reloads the config ([`reload`]),
/// `SIGINT`/`SIGTERM` drain and exit.
///
/// ```no_run
/// # struct MyServer;
/// # struct Running;
/// # impl socks4_server::cli::Running for Running { fn shutdown(self) {} }
/// # impl socks4_server::cli::Serve for MyServer {
/// #     type Running = Running;
/// #     fn bind_live(_: std::sync::Arc<socks4_server::reload::LiveConfig>, _: Option<Vec<std::net::TcpListener>>) -> std::io::Result<Self> { Ok(MyServer) }
/// #     fn local_addrs(&self) -> Vec<std::net::SocketAddr> { Vec::new() }
/// #     fn spawn(self) -> std::io::Result<Running> { Ok(Running) }
/// #     fn metrics(&self) -> std::sync::Arc<socks4_server::metrics::Metrics> { socks4_server::metrics::Metrics::new(1, false) }
/// # }
/// fn main() -> std::process::ExitCode {
///     socks4_server::cli::main::<MyServer>("my-socks4")
/// }
/// ```
pub fn main<S: Serve>(name: &str) -> ExitCode {
    // Named for the binary: `--version` says `socks4-tokio 0.3.0`, not this crate's name.
    let args = ServerArgs::try_parse_with(manual::command(name), std::env::args_os()).unwrap_or_else(|e| e.exit());
    // --- Packaging: the man page and completions, rendered from this command line. ---
    if args.generate_man || args.generate_completions.is_some() {
        let out = &mut std::io::stdout().lock();
        let written = match args.generate_completions {
            Some(shell) => manual::completions(shell, name, out),
            None => manual::man_page(name, out),
        };
        return match written.and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: cannot write: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    // --- Operations: --check-config, socket activation, live config, signals. ---
    if args.check_config {
        return match check_config_command(&args, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::from(2)
            }
        };
    }
    let activated = match systemd::listeners() {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("{name}: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    let activated_addrs = match activated.as_deref().map(systemd::local_addrs).transpose() {
        Ok(addrs) => addrs,
        Err(e) => {
            eprintln!("{name}: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match args.to_config_activated(activated_addrs.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    // A benchmark knob: a misspelt policy must not be measured as the default under its name.
    let splice = match socks4_sys::SplicePolicy::try_from_env() {
        Ok(splice) => splice,
        Err(e) => {
            eprintln!("{name}: {}: {e}", socks4_sys::SPLICE_POLICY_ENV);
            return ExitCode::from(2);
        }
    };
    let set_log_level = init_logging(&config.log_level, config.log_format);
    if let Some(splice) = splice {
        tracing::info!("splice policy {splice} ({})", socks4_sys::SPLICE_POLICY_ENV);
    }
    let metrics_addr = config.metrics;
    // Before serving: from then on a SIGHUP reloads rather than kills.
    let mut signals = match crate::signals::Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("{name}: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = match LiveConfig::new(config) {
        Ok(live) => live,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if activated.is_some() {
        tracing::info!("socket activation: serving the listeners systemd passed, not the configured addresses");
    }
    let server = match S::bind_live(Arc::clone(&live), activated) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{name}: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in server.local_addrs() {
        tracing::info!("{name} listening on {addr}");
    }
    let metrics = server.metrics();
    let endpoint = match metrics_addr.map(|addr| Endpoint::start(addr, Arc::clone(&metrics))).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(endpoint) = &endpoint {
        tracing::info!("{name} serving metrics on http://{}/metrics", endpoint.local_addr());
    }
    let running = match server.spawn() {
        Ok(running) => running,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    systemd::notify(systemd::State::Ready);
    let signal = loop {
        match signals.wait() {
            crate::signals::Signal::Reload => {
                let ok = reload(&args, &live, activated_addrs.as_deref(), &*set_log_level).is_ok();
                metrics.reloaded(ok);
            }
            crate::signals::Signal::Stop(signal) => break signal,
        }
    };
    let grace = live.snapshot().config.timeouts.shutdown_grace;
    tracing::info!("signal {signal}: shutting down; live connections may finish within {grace:?}");
    systemd::notify(systemd::State::Stopping);
    running.shutdown();
    ExitCode::SUCCESS
}

/// `--check-config`: builds the config from the file and the command line as a start would
/// (without binding or socket activation) and writes it to `out` as a config file, or returns why
/// it is invalid.
///
/// ```
/// use socks4_server::cli::{ServerArgs, check_config_command};
/// let args = ServerArgs::try_parse_from(["socks4", "--check-config", "--deny", "port 25"])?;
/// let mut out = Vec::new();
/// check_config_command(&args, &mut out)?;
/// assert!(String::from_utf8(out)?.contains("rules = [\"deny port 25\"]"));
/// let open = ServerArgs::try_parse_from(["socks4", "--check-config", "--listen", "0.0.0.0:1080"])?;
/// assert!(check_config_command(&open, &mut Vec::new()).unwrap_err().contains("open proxy"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// The reason the configuration is invalid (the [`ConfigError`] of [`ServerArgs::to_config`] or of
/// loading the users file, as text), or a failure to write to `out`.
pub fn check_config_command(args: &ServerArgs, out: &mut dyn Write) -> Result<(), String> {
    let config = args.to_config().map_err(|e| e.to_string())?;
    // The verifier is what the server builds: the users file is read here as at start.
    config.verifier().map_err(|e| e.to_string())?;
    let source = args.config.as_ref().map_or("no config file".to_string(), |p| format!("file {}", p.display()));
    writeln!(out, "# The effective configuration ({source} and the command line): valid.")
        .and_then(|()| out.write_all(effective_toml(&config).as_bytes()))
        .map_err(|e| format!("cannot write: {e}"))
}

/// What `SIGHUP` does: tells systemd it is reloading, reads the config file again with the
/// command line's options on top (the same merge as at start: an option given on the command line
/// still wins over the file; `activated` as for [`ServerArgs::to_config_activated`]), swaps it in
/// for new connections and applies its log level, logs the outcome, and tells systemd it is ready
/// again. A bad file (or users file) keeps the running config and logs why in one line; settings
/// that take a restart (listen addresses, workers, reuseport, metrics, log format) are logged and ignored.
///
/// # Errors
///
/// The [`ConfigError`] that kept the running config (the file or users file cannot be read or is
/// invalid); it is logged too.
pub fn reload(
    args: &ServerArgs,
    live: &LiveConfig,
    activated: Option<&[SocketAddr]>,
    set_log_level: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Change, ConfigError> {
    systemd::notify(systemd::State::Reloading);
    let source = args.config.as_ref().map_or("the command line".to_string(), |p| p.display().to_string());
    let old = live.snapshot();
    let old_level = old.config.log_level.clone();
    let outcome = reload_config(args, live, activated).and_then(|config| live.replace(config));
    match &outcome {
        Ok(change) => {
            let new = live.snapshot();
            if old.config.users.is_some() && new.config.users.is_none() {
                tracing::warn!("config reload: {source} names no users file now: user ids are no longer verified");
            }
            if !old.configured_rules().is_empty() && new.configured_rules().is_empty() {
                tracing::warn!("config reload: {source} leaves no rules: every request is allowed now");
            }
            let new_level = live.snapshot().config.log_level.clone();
            if new_level != old_level {
                if let Err(e) = set_log_level(&new_level) {
                    tracing::warn!("config reload: cannot set log level {new_level}: {e}");
                }
            }
            for setting in &change.restart_needed {
                tracing::warn!(
                    "config reload: {setting} changed in {source}: takes a restart; keeping the running one"
                );
            }
            if change.limits_changed {
                tracing::info!("config reload: client limits changed: new connections are counted afresh");
            }
            tracing::info!("config reloaded from {source}: new connections use it");
        }
        Err(e) => {
            let reason = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            tracing::warn!("config reload failed, keeping the running config: {reason}");
        }
    }
    systemd::notify(systemd::State::Ready);
    outcome
}

/// The config a reload would apply: the file read once, with the command line on top; a blank file
/// ([`is_blank_config`]) is refused ([`ConfigError::BlankReload`]) unless applying it changes
/// nothing, so a file truncated to be rewritten in place cannot strip the running server of its
/// rules, users and limits.
fn reload_config(
    args: &ServerArgs,
    live: &LiveConfig,
    activated: Option<&[SocketAddr]>,
) -> Result<ServerConfig, ConfigError> {
    let text = args.config.as_deref().map(read_config_file).transpose()?;
    let config = args.merged_text(text.as_deref(), activated)?;
    match (&args.config, text) {
        (Some(path), Some(text)) if is_blank_config(&text) && !live.is_running(&config) => {
            Err(ConfigError::BlankReload(path.display().to_string()))
        }
        _ => Ok(config),
    }
}

/// Does this config text hold nothing but whitespace and `#` comments (what a file truncated to
/// be rewritten in place holds for a while)?
///
/// ```
/// use socks4_server::cli::is_blank_config;
/// assert!(is_blank_config(" \n# socks4.toml\n\t\n"));
/// assert!(!is_blank_config("rules = []\n"));
/// ```
pub fn is_blank_config(text: &str) -> bool {
    text.lines().map(str::trim).all(|line| line.is_empty() || line.starts_with('#'))
}

/// Sets a new log filter (a level or a tracing directive) on the installed subscriber.
type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String>>;

/// Installs the process's log subscriber: `filter` (`--log-level` or the file's `log_level`) to
/// stderr, as text (coloured on a terminal) or one JSON object per event; returns what sets a new
/// filter (a reload's `log_level`).
fn init_logging(filter: &str, format: LogFormat) -> SetLogFilter {
    use tracing_subscriber::EnvFilter;
    crate::log::set_format(format);
    let builder = tracing_subscriber::fmt().with_env_filter(EnvFilter::new(filter)).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let logs = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            Box::new(move |level| handle.reload(EnvFilter::new(level)).map_err(|e| e.to_string()))
        }
        LogFormat::Json => {
            let logs = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            Box::new(move |level| handle.reload(EnvFilter::new(level)).map_err(|e| e.to_string()))
        }
    }
}

/// One `--allow`/`--deny` value: the conditions of a rule, or `any`.
fn cli_rule(action: Action, conditions: &str) -> Result<Rule, ConfigError> {
    Ok(format!("{action} {}", conditions.trim()).parse::<Rule>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<ServerConfig, ConfigError> {
        let mut all = vec!["socks4"];
        all.extend_from_slice(args);
        ServerArgs::try_parse_from(all).unwrap().to_config()
    }

    /// Runs the test `name` of this test binary in a child process with `vars` set (and every other
    /// `SOCKS4_*` variable removed), so that no test of this process sees them; returns its output
    /// when it passed.
    fn run_child(name: &str, vars: &[(&str, &str)]) -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SOCKS4_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SOCKS4_TEST_CHILD", name).envs(vars.iter().copied());
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "child {name} failed:\n{text}");
        text
    }

    /// Whether this process is the child [`run_child`] started for `name`.
    fn is_child(name: &str) -> bool {
        std::env::var("SOCKS4_TEST_CHILD").is_ok_and(|n| n == name)
    }

    /// Every option reads a `SOCKS4_*` variable; a flag wins over it and it wins over the file.
    #[test]
    fn environment_sits_between_flags_and_file() {
        let file = std::env::temp_dir().join(format!("socks4-server-env-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "workers = 3\nmax_connections = 100\nlog_level = \"warn\"\nrules = [\"allow port 80\"]\n",
        )
        .unwrap();
        let out = run_child(
            "cli::tests::environment_child",
            &[
                ("SOCKS4_CONFIG", file.to_str().unwrap()),
                ("SOCKS4_WORKERS", "5"),
                ("SOCKS4_MAX_CONNECTIONS", "200"),
                ("SOCKS4_LISTEN", "127.0.0.1:0,[::1]:0"),
                ("SOCKS4_ALLOW", "from 10.0.0.0/8;user a,b"),
                ("SOCKS4_DENY", "port 25"),
                ("SOCKS4_REUSEPORT", "true"),
                ("SOCKS4_SAFE_SOCKS", "false"),
                ("SOCKS4_IDLE_TIMEOUT", "2m"),
                ("SOCKS4_MAX_BIND_WAITS", "9"),
                ("SOCKS4_PROXY_PROTOCOL", "127.0.0.0/8,::1/128"),
                ("SOCKS4_LOG", "debug"),
                ("SOCKS4_LOG_FORMAT", "json"),
            ],
        );
        let _ = std::fs::remove_file(&file);
        assert!(out.contains("environment checked"), "{out}");
        // A bad value names its variable.
        let out = run_child("cli::tests::environment_bad_child", &[("SOCKS4_WORKERS", "many")]);
        assert!(out.contains("bad value checked"), "{out}");
    }

    #[test]
    fn environment_child() {
        if !is_child("cli::tests::environment_child") {
            return;
        }
        let args = ServerArgs::try_parse_from(["socks4", "--max-connections", "300", "--allow", "port 443"]).unwrap();
        let c = args.to_config().unwrap();
        assert_eq!(c.workers, Some(5), "env over file");
        assert_eq!(c.max_connections, 300, "flag over env");
        assert_eq!(c.listen, ["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()] as [SocketAddr; 2]);
        let texts: Vec<String> = c.rules.0.iter().map(|r| r.to_string()).collect();
        // The file's rules, then the command line's; `--allow` replaces SOCKS4_ALLOW's list.
        assert_eq!(texts, ["allow port 80", "allow port 443", "deny port 25"]);
        // Without the flag: the file's, then the environment's, SOCKS4_DENY's before SOCKS4_ALLOW's.
        let c = ServerArgs::try_parse_from(["socks4"]).unwrap().to_config().unwrap();
        let texts: Vec<String> = c.rules.0.iter().map(|r| r.to_string()).collect();
        assert_eq!(texts, ["allow port 80", "deny port 25", "allow from 10.0.0.0/8", "allow user a,b"]);
        assert_eq!(c.max_connections, 200, "env over file");
        assert!(c.reuseport && !c.safe_socks);
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));
        assert_eq!(c.client_limits.max_bind_waits, 9);
        assert_eq!(c.proxy_protocol.0.len(), 2);
        assert_eq!((c.log_level.as_str(), c.log_format), ("debug", LogFormat::Json), "SOCKS4_LOG over the file");
        // A flag replaces a list from the environment.
        let args = ServerArgs::try_parse_from(["socks4", "--listen", "127.0.0.2:0"]).unwrap();
        assert_eq!(args.listen, ["127.0.0.2:0".parse::<SocketAddr>().unwrap()]);
        println!("environment checked");
    }

    #[test]
    fn environment_bad_child() {
        if !is_child("cli::tests::environment_bad_child") {
            return;
        }
        let e = ServerArgs::try_parse_from(["socks4"]).unwrap_err().to_string();
        assert!(e.contains("many") && e.contains("--workers"), "{e}");
        println!("bad value checked");
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
            "--metrics",
            "127.0.0.1:9100",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert!(c.safe_socks);
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
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
    fn proxy_protocol_sources() {
        let c = config(&["--proxy-protocol", "10.0.0.2", "--proxy-protocol", "fd00::/64"]).unwrap();
        assert!(c.proxy_protocol.contains("10.0.0.2".parse().unwrap()));
        assert!(c.proxy_protocol.contains("::ffff:10.0.0.2".parse().unwrap()));
        assert!(c.proxy_protocol.contains("fd00::9".parse().unwrap()));
        assert!(!c.proxy_protocol.contains("10.0.0.3".parse().unwrap()));
        assert!(ServerArgs::try_parse_from(["socks4", "--proxy-protocol", "10.0.0.0/33"]).is_err());
        let c = parse_config_toml("proxy_protocol = [\"127.0.0.0/8\"]").unwrap();
        assert!(c.proxy_protocol.contains("127.0.0.9".parse().unwrap()));
        assert!(parse_config_toml("proxy_protocol = [\"nope\"]").is_err());
        assert!(config(&[]).unwrap().proxy_protocol.is_empty());
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
            metrics = "[::1]:9100"
            log_format = "json"
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
        assert_eq!((c.metrics, c.log_format), (Some("[::1]:9100".parse().unwrap()), LogFormat::Json));
        assert!(parse_config_toml("log_format = \"xml\"").is_err());
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
        assert_eq!((d.client_limits.max_bind_waits, d.client_limits.max_bind_waits_per_client), (64, 8));
        assert_eq!(d.client_limits.max_handshakes_per_client, 64, "one address cannot fill the handshake cap");
        assert!(d.bandwidth.is_off() && d.users.is_none());
        let c = config(&[
            "--max-per-client",
            "16",
            "--max-rate-per-client",
            "20/s",
            "--max-handshakes",
            "0",
            "--max-bind-waits",
            "10",
            "--max-bind-waits-per-client",
            "2",
            "--max-handshakes-per-client",
            "3",
        ])
        .unwrap();
        let cl = c.client_limits;
        assert_eq!((cl.max_per_client, cl.max_handshakes, cl.max_handshakes_per_client), (16, 0, 3));
        assert_eq!((cl.max_bind_waits, cl.max_bind_waits_per_client), (10, 2));
        assert_eq!(cl.max_rate_per_client, Some("20/s".parse().unwrap()));
        let caps =
            ["socks4", "--rate-limit-conn", "10M", "--rate-limit-user", "512K", "--rate-limit-client", "1000000"];
        let args = ServerArgs::try_parse_from(caps).unwrap();
        assert_eq!(args.rate_limit_conn.map(|r| r.bytes_per_sec()), Some(10 << 20));
        assert_eq!(args.rate_limit_user.map(|r| r.bytes_per_sec()), Some(512 << 10));
        assert_eq!(args.rate_limit_client.map(|r| r.bytes_per_sec()), Some(1_000_000));
        let caps = args.to_config().unwrap().bandwidth;
        assert_eq!(caps.conn.map(|r| r.bytes_per_sec()), Some(10 << 20));
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
            max_bind_waits = 16
            max_bind_waits_per_client = 4
            [bandwidth]
            conn = "1M"
            user = 65536
            "#,
        )
        .unwrap();
        assert_eq!(c.client_limits.max_per_client, 8);
        assert_eq!(c.client_limits.max_rate_per_client.map(|r| r.to_string()).as_deref(), Some("600/m"));
        assert_eq!((c.client_limits.max_handshakes, c.client_limits.tracked_clients), (100, 1000));
        assert_eq!((c.client_limits.max_bind_waits, c.client_limits.max_bind_waits_per_client), (16, 4));
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

    // --- Operations: reload, check, systemd. ---

    #[test]
    fn activated_sockets_replace_the_listen_addresses_and_are_checked() {
        let args = ServerArgs::try_parse_from(["socks4", "--listen", "127.0.0.1:1080", "--reuseport"]).unwrap();
        let local: SocketAddr = "[::1]:2000".parse().unwrap();
        let c = args.to_config_activated(Some(&[local])).unwrap();
        assert_eq!((c.listen, c.reuseport), (vec![local], false));
        let open: SocketAddr = "0.0.0.0:1080".parse().unwrap();
        assert_eq!(args.to_config_activated(Some(&[open])), Err(ConfigError::OpenProxy(open)));
    }

    #[test]
    fn log_level_from_the_file_unless_given() {
        let dir = std::env::temp_dir().join(format!("socks4-server-log-{}.toml", std::process::id()));
        std::fs::write(&dir, "log_level = \"debug\"\n").unwrap();
        let file = dir.to_str().unwrap();
        let from_file = config(&["--config", file]);
        let given = config(&["--config", file, "--log-level", "warn"]);
        let bad = config(&["--log-level", "info,[{"]);
        std::fs::remove_file(&dir).unwrap();
        if std::env::var_os("SOCKS4_LOG").is_none() {
            assert_eq!(from_file.unwrap().log_level, "debug");
            assert_eq!(config(&[]).unwrap().log_level, crate::config::DEFAULT_LOG_LEVEL);
        }
        assert_eq!(given.unwrap().log_level, "warn");
        assert!(matches!(bad, Err(ConfigError::LogLevel(_))), "{bad:?}");
    }

    #[test]
    fn a_blank_file_is_not_reloaded_over_a_running_config() {
        let path = std::env::temp_dir().join(format!("socks4-server-blank-{}.toml", std::process::id()));
        std::fs::write(&path, "rules = [\"allow port 80\"]\n[client_limits]\nmax_per_client = 5\n").unwrap();
        let args = ServerArgs::try_parse_from(["socks4", "--config", path.to_str().unwrap()]).unwrap();
        let live = LiveConfig::new(args.to_config().unwrap()).unwrap();
        let before = live.snapshot();
        let no_level = |_: &str| Ok(());
        for blank in ["", "  \n\t\n", "# socks4.toml\n\n"] {
            std::fs::write(&path, blank).unwrap();
            let refused = reload(&args, &live, None, &no_level).unwrap_err();
            assert!(matches!(refused, ConfigError::BlankReload(_)), "{blank:?}: {refused}");
            assert!(Arc::ptr_eq(&before, &live.snapshot()), "{blank:?} kept the running config");
        }
        // On purpose: a file that says something is applied, even if it empties the rules.
        std::fs::write(&path, "rules = []\n").unwrap();
        reload(&args, &live, None, &no_level).unwrap();
        assert!(live.snapshot().config.rules.is_empty());
        // A blank file over a config it would not change is a no-op, not an error.
        let started_blank = ServerArgs::try_parse_from(["socks4", "--config", path.to_str().unwrap()]).unwrap();
        std::fs::write(&path, "\n").unwrap();
        let live = LiveConfig::new(started_blank.to_config().unwrap()).unwrap();
        reload(&started_blank, &live, None, &no_level).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reload_reads_the_file_again_and_the_command_line_still_wins() {
        let path = std::env::temp_dir().join(format!("socks4-server-reload-{}.toml", std::process::id()));
        std::fs::write(&path, "max_connections = 50\nrules = [\"allow port 80\"]\n").unwrap();
        let file = path.to_str().unwrap();
        let args = ServerArgs::try_parse_from(["socks4", "--config", file, "--max-connections", "7"]).unwrap();
        let live = LiveConfig::new(args.to_config().unwrap()).unwrap();
        let levels = std::cell::RefCell::new(Vec::new());
        let set_level = |level: &str| {
            levels.borrow_mut().push(level.to_string());
            Ok(())
        };
        let text = "max_connections = 100\nworkers = 9\nlog_level = \"debug\"\nrules = [\"allow port 443\"]\n";
        std::fs::write(&path, text).unwrap();
        let change = reload(&args, &live, None, &set_level).unwrap();
        let now = live.snapshot();
        assert_eq!(now.config.max_connections, 7, "the command line wins, as at start");
        assert_eq!(now.config.rules.0[0].to_string(), "allow port 443");
        assert_eq!((change.restart_needed, now.config.workers), (vec!["workers"], None));
        assert_eq!(*levels.borrow(), ["debug"]);
        std::fs::write(&path, "rules = [\"allow port none\"]\n").unwrap();
        assert!(matches!(reload(&args, &live, None, &set_level), Err(ConfigError::File(_))));
        std::fs::remove_file(&path).unwrap();
        assert!(Arc::ptr_eq(&now, &live.snapshot()), "a bad file keeps the running config");
        assert!(matches!(reload(&args, &live, None, &set_level), Err(ConfigError::File(_))), "a missing file too");
    }

    #[test]
    fn generate_options_parse_and_stay_out_of_help() {
        let args = ServerArgs::try_parse_from(["socks4", "--generate-completions", "zsh"]).unwrap();
        assert_eq!((args.generate_man, args.generate_completions), (false, Some(manual::Shell::Zsh)));
        assert!(ServerArgs::try_parse_from(["socks4", "--generate-man"]).unwrap().generate_man);
        assert!(ServerArgs::try_parse_from(["socks4", "--generate-completions", "tcsh"]).is_err());
        let help = ServerArgs::command().render_long_help().to_string();
        assert!(help.contains("--listen") && !help.contains("--generate"), "{help}");
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
