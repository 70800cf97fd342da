//! `socks4-load MODE (--proxy ADDR | --direct) [options]`: a load generator for any SOCKS4 server
//! (handshake rate, bulk throughput, memory per held connection). See `--help`.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use socks4_tools::load::{self, BulkConfig, HoldConfig, Plan, RateConfig, echo::EchoServer};

const USAGE: &str = "\
usage: socks4-load rate|bulk|hold (--proxy ADDR | --direct) [options]

Modes:
  rate   C threads loop connect -> CONNECT -> echo (verified) -> close for T seconds;
         reports handshakes/s, p50/p99 latency of the whole cycle, errors
  bulk   S streams each push N MiB through an echo target and pull it back, verified by
         byte count and checksum; reports aggregate MiB/s (both directions counted)
  hold   open K relayed connections, each proven by one echo, hold them all, and sample the
         server's VmRSS (summed over its process tree) before and after: KiB per connection

Echo targets listen on 127.0.1.1, 127.0.1.2, ... (one per --targets) in a child process
(`socks4-load echo-target`), so the generator and the targets each get the whole fd limit.
Clients bind 127.0.0.2, 127.0.0.3, ... with IP_BIND_ADDRESS_NO_PORT, rotating per connection.

options:
  --proxy ADDR          the SOCKS4 server (host:port)
  --direct              no proxy: connect straight to the echo targets (the ceiling)
  --concurrency C       rate, hold: client threads (default 64)
  --secs T              rate: duration in seconds, fractions allowed (default 5)
  --payload BYTES       rate: echo size per connection (default 64)
  --streams S           bulk: concurrent streams (default 8)
  --mib N               bulk: MiB each stream sends (and receives back) (default 256)
  --connections K       hold: connections to hold (default 10000)
  --server-pid PID      hold: the server process whose memory is sampled
  --settle SECS         hold: pause before the second memory sample (default 1)
  --sources N           client source addresses 127.0.0.2.. (default 16; 0 = kernel's choice)
  --targets N           echo target addresses 127.0.1.1.. (default 4)
  --target-threads N    echo target event-loop threads (default 2)
  --in-process-targets  run the echo targets in this process instead of a child
  --user-id U           SOCKS4 user id (default load)
  --timeout SECS        connect/read/write timeout (default 10)
  --label TEXT          a name for the run, echoed in the output
  --json                print one JSON object (one line) instead of human-readable lines
  -h, --help            this help

Exit status: 0 if the run had no errors, 1 if it had some (or could not run), 2 on bad usage.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rate,
    Bulk,
    Hold,
    EchoTarget,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    proxy: Option<SocketAddr>,
    direct: bool,
    concurrency: usize,
    secs: f64,
    payload: usize,
    streams: usize,
    mib: u64,
    connections: usize,
    server_pid: Option<u32>,
    settle: f64,
    sources: usize,
    targets: usize,
    target_threads: usize,
    in_process: bool,
    user_id: String,
    timeout: f64,
    label: String,
    json: bool,
}

fn num<T: FromStr>(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|e| format!("{flag} {v}: {e}"))
}

fn secs(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<f64, String> {
    let v: f64 = num(it, flag)?;
    if !(0.0..=1e6).contains(&v) {
        return Err(format!("{flag} {v}: out of range"));
    }
    Ok(v)
}

/// `Ok(None)`: help was asked for.
fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut it = args.into_iter();
    let mode = match it.next().as_deref() {
        Some("rate") => Mode::Rate,
        Some("bulk") => Mode::Bulk,
        Some("hold") => Mode::Hold,
        Some("echo-target") => Mode::EchoTarget,
        Some("-h" | "--help") => return Ok(None),
        Some(m) => return Err(format!("unknown mode {m:?}")),
        None => return Err("a mode is required".to_owned()),
    };
    let mut a = Args {
        mode,
        proxy: None,
        direct: false,
        concurrency: 64,
        secs: 5.0,
        payload: 64,
        streams: 8,
        mib: 256,
        connections: 10_000,
        server_pid: None,
        settle: 1.0,
        sources: 16,
        targets: 4,
        target_threads: 2,
        in_process: false,
        user_id: "load".to_owned(),
        timeout: 10.0,
        label: String::new(),
        json: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--proxy" => {
                let v = it.next().ok_or("--proxy needs a value")?;
                let addr = v.to_socket_addrs().map_err(|e| format!("--proxy {v}: {e}"))?.next();
                a.proxy = Some(addr.ok_or_else(|| format!("--proxy {v}: no address"))?);
            }
            "--direct" => a.direct = true,
            "--concurrency" => a.concurrency = num(&mut it, &arg)?,
            "--secs" => a.secs = secs(&mut it, &arg)?,
            "--payload" => a.payload = num(&mut it, &arg)?,
            "--streams" => a.streams = num(&mut it, &arg)?,
            "--mib" => a.mib = num(&mut it, &arg)?,
            "--connections" => a.connections = num(&mut it, &arg)?,
            "--server-pid" => a.server_pid = Some(num(&mut it, &arg)?),
            "--settle" => a.settle = secs(&mut it, &arg)?,
            "--sources" => a.sources = num(&mut it, &arg)?,
            "--targets" => a.targets = num(&mut it, &arg)?,
            "--target-threads" => a.target_threads = num(&mut it, &arg)?,
            "--in-process-targets" => a.in_process = true,
            "--user-id" => a.user_id = it.next().ok_or("--user-id needs a value")?,
            "--timeout" => a.timeout = secs(&mut it, &arg)?,
            "--label" => a.label = it.next().ok_or("--label needs a value")?,
            "--json" => a.json = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if a.mode != Mode::EchoTarget && a.proxy.is_some() == a.direct {
        return Err("give exactly one of --proxy ADDR and --direct".to_owned());
    }
    if a.sources > 250 || a.targets == 0 || a.targets > 250 {
        return Err("--sources must be 0..=250 and --targets 1..=250".to_owned());
    }
    if a.payload == 0 || a.concurrency == 0 || a.streams == 0 {
        return Err("--payload, --concurrency and --streams must be positive".to_owned());
    }
    if a.mib > (1 << 40) {
        return Err("--mib is too large".to_owned());
    }
    Ok(Some(a))
}

fn target_ips(n: usize) -> Vec<Ipv4Addr> {
    load::loopback_range(Ipv4Addr::new(127, 0, 1, 1), n)
}

/// `socks4-load echo-target`: serve, print the addresses, run until stdin closes.
fn echo_target(a: &Args) -> io::Result<()> {
    let server = EchoServer::start(&target_ips(a.targets), a.target_threads)?;
    let list: Vec<String> = server.addrs().iter().map(ToString::to_string).collect();
    println!("targets {}", list.join(","));
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin();
    while stdin.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    drop(server);
    Ok(())
}

/// The echo targets of a run: in this process, or a child process that exits when its stdin
/// closes.
enum Targets {
    InProcess(EchoServer),
    Child { child: Child, stdin: Option<ChildStdin>, addrs: Vec<SocketAddrV4> },
}

impl Targets {
    fn start(a: &Args) -> io::Result<Self> {
        if a.in_process {
            return Ok(Targets::InProcess(EchoServer::start(&target_ips(a.targets), a.target_threads)?));
        }
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["echo-target", "--targets", &a.targets.to_string()])
            .args(["--target-threads", &a.target_threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let addrs: Result<Vec<SocketAddrV4>, _> =
            line.trim().strip_prefix("targets ").unwrap_or("").split(',').map(str::parse).collect();
        match addrs {
            Ok(addrs) if !addrs.is_empty() => Ok(Targets::Child { child, stdin, addrs }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!("the echo-target child printed {line:?}")))
            }
        }
    }

    fn addrs(&self) -> Vec<SocketAddrV4> {
        match self {
            Targets::InProcess(s) => s.addrs().to_vec(),
            Targets::Child { addrs, .. } => addrs.clone(),
        }
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        if let Targets::Child { child, stdin, .. } = self {
            drop(stdin.take());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the mode; returns the output text and the error count.
fn run(a: &Args) -> io::Result<(String, u64)> {
    let targets = Targets::start(a)?;
    let mut plan = Plan::new(
        if a.direct { None } else { a.proxy },
        targets.addrs(),
        load::loopback_range(Ipv4Addr::new(127, 0, 0, 2), a.sources),
    );
    plan.user_id = a.user_id.clone().into_bytes();
    plan.timeout = Duration::from_secs_f64(a.timeout.max(0.001));
    let out = match a.mode {
        Mode::Rate => {
            let cfg = RateConfig {
                concurrency: a.concurrency,
                duration: Duration::from_secs_f64(a.secs),
                payload: a.payload,
            };
            let r = load::run_rate(&a.label, &plan, &cfg)?;
            (if a.json { r.json() } else { r.human() }, r.common.errors)
        }
        Mode::Bulk => {
            let cfg = BulkConfig { streams: a.streams, bytes: a.mib * 1024 * 1024 };
            let r = load::run_bulk(&a.label, &plan, &cfg)?;
            (if a.json { r.json() } else { r.human() }, r.common.errors)
        }
        Mode::Hold => {
            let cfg = HoldConfig {
                connections: a.connections,
                concurrency: a.concurrency,
                server_pid: a.server_pid,
                settle: Duration::from_secs_f64(a.settle),
            };
            let r = load::run_hold(&a.label, &plan, &cfg)?;
            (if a.json { r.json() } else { r.human() }, r.common.errors)
        }
        Mode::EchoTarget => return Err(io::Error::other("echo-target is not a load mode")),
    };
    drop(targets);
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("socks4-load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.mode == Mode::EchoTarget {
        return match echo_target(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("socks4-load echo-target: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok((out, errors)) => {
            println!("{out}");
            if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("socks4-load: {e}");
            ExitCode::FAILURE
        }
    }
}
