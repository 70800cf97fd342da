//! A check where the network loses a packet: the server runs in a network namespace of the
//! check's own, reached through a veth pair, and nftables there drops the first copy of the
//! server's reply. On plain loopback nothing is lost, so a server that resets a rejected client
//! still delivers its reply; here the reply waits for its retransmission, and a reset sent
//! meanwhile destroys it.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); skipped without them unless
//! `SOCKS4_REQUIRE_NETNS` is set. The addresses are a /30 of 198.18.0.0/15 (the benchmarking
//! range, RFC 2544) on the veth pair alone, and the client's socket is bound to its end of the
//! pair: nothing it sends can leave by another route.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::{line_with, start_command};
use crate::scenarios::{Failure, Outcome};
use crate::wire;

/// How much the rejected client sends after its request: more than the server's first read takes,
/// less than the drain's bound (256 KiB).
const TRAILING_BYTES: usize = 200 * 1024;

/// How long the client waits for its reply: the retransmission comes after one retransmission
/// timeout (200 ms at least, about 1 s before the connection measured its round trip).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace with one end of a veth pair in it; both go when it is dropped.
struct Namespace {
    name: String,
    /// The veth end outside the namespace, with [`Self::outside`].
    device: String,
    outside: Ipv4Addr,
    inside: Ipv4Addr,
}

/// Runs `program ARGS…` ([`ops::run`](super::ops::run): bounded in time); its output, or an
/// error that names the command and what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    match super::ops::run(Path::new(program), args) {
        Ok((status, out, _)) if status.success() => Ok(out),
        Ok((status, _, err)) => Err(format!("{program} {}: {status} {}", args.join(" "), err.trim())),
        Err(e) => Err(e.to_string()),
    }
}

impl Namespace {
    /// A namespace named after this process and a counter, with `lo` up and a veth pair whose
    /// ends hold a /30 of 198.18.0.0/15 picked the same way.
    fn create() -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id();
        // Device names have at most 15 bytes: "s4" + 6 hex digits of the pid + the counter + a/b.
        let tag = format!("s4{:06x}{:x}", id & 0xff_ffff, n & 0xf);
        let subnet = (id.wrapping_mul(16).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + subnet * 4;
        let ns = Self {
            name: format!("{tag}-ns"),
            device: format!("{tag}a"),
            outside: Ipv4Addr::from(base + 1),
            inside: Ipv4Addr::from(base + 2),
        };
        remove_stale();
        run("ip", &["netns", "add", &ns.name])?;
        // From here on, dropping `ns` removes the namespace and with it the veth pair.
        let inner = format!("{tag}b");
        let outside = format!("{}/30", ns.outside);
        let inside = format!("{}/30", ns.inside);
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        run("ip", &["link", "add", &ns.device, "type", "veth", "peer", "name", &inner, "netns", &ns.name])?;
        run("ip", &["addr", "add", &outside, "dev", &ns.device])?;
        run("ip", &["link", "set", &ns.device, "up"])?;
        run("ip", &["-n", &ns.name, "addr", "add", &inside, "dev", &inner])?;
        run("ip", &["-n", &ns.name, "link", "set", &inner, "up"])?;
        Ok(ns)
    }

    /// Runs nftables commands inside the namespace.
    fn nft(&self, commands: &str) -> Result<String, String> {
        run("ip", &["netns", "exec", &self.name, "nft", commands])
    }

    /// Lists the namespace's nftables ruleset.
    fn ruleset(&self) -> Result<String, String> {
        run("ip", &["netns", "exec", &self.name, "nft", "list", "ruleset"])
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        // The pair goes with the namespace; this only matters if the move into it failed.
        let _ = run("ip", &["link", "del", &self.device]);
    }
}

/// Deletes the namespaces (and so their veth pairs) of earlier runs whose process is gone: a
/// check that was killed never ran its `Drop`.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for name in list.lines().filter_map(|line| line.split_whitespace().next()) {
        let Some(tag) = name.strip_prefix("s4").and_then(|rest| rest.strip_suffix("-ns")) else { continue };
        let Some(pid) = tag.get(..6).and_then(|hex| u32::from_str_radix(hex, 16).ok()) else { continue };
        if pid != std::process::id() & 0xff_ffff && !Path::new(&format!("/proc/{pid}")).exists() {
            // Its server outlived it and holds the namespace (and the veth pair) open.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", pid]);
                }
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// What is missing for a namespace check, if anything.
fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (network namespaces and nftables need it)".into());
    }
    for (program, version, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        if run(program, &[version]).is_err() {
            return Some(format!("no {program} (Debian's {package})"));
        }
    }
    None
}

/// A rejected client's reply survives a lost packet: `binary` runs in a network namespace
/// (`--allow 'user allowed'`) where nftables drops the first packet carrying data from the
/// server's port, which is the reply 91 to a CONNECT by another user. The client then sends
/// 200 KiB after its request (4 KiB send buffer) and half-closes. A server that closes with that
/// input unread sends a reset, which discards the reply waiting for its retransmission: the client
/// reads a reset and no reply. A server that drains after its final reply
/// (`socks4_server::linger`) retransmits it: the client reads 91 and a clean end of file. The
/// check also asserts that the rule did drop a packet.
///
/// # Errors
/// What went wrong; a skip without root, `ip` or `nft`, unless `SOCKS4_REQUIRE_NETNS` is set.
pub fn rejected_reply_survives_loss(binary: &Path) -> Result<Outcome, Failure> {
    if let Some(why) = missing() {
        return if std::env::var_os("SOCKS4_REQUIRE_NETNS").is_some() {
            Err(Failure::new(format!("SOCKS4_REQUIRE_NETNS is set: {why}")))
        } else {
            Ok(Outcome::Skip(why))
        };
    }
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        // Root without CAP_SYS_ADMIN (a container): a skip like the others, unless required.
        Err(e)
            if (e.contains("not permitted") || e.contains("Permission denied"))
                && std::env::var_os("SOCKS4_REQUIRE_NETNS").is_none() =>
        {
            return Ok(Outcome::Skip(format!("no network namespaces here: {e}")));
        }
        Err(e) => return Err(Failure::new(format!("setting up the namespace: {e}"))),
    };
    let listen = format!("{}:0", ns.inside);
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.name]).arg(binary).args(["--listen", &listen, "--allow", "user allowed"]);
    let (server, lines, proxy, mut seen) = start_command(command)?;
    ns.nft(&format!(
        "add table inet socks4_check; \
         add chain inet socks4_check output {{ type filter hook output priority 0; }}; \
         add rule inet socks4_check output tcp sport {} tcp flags & psh == psh quota until 100 bytes drop",
        proxy.port()
    ))
    .map_err(|e| Failure::new(format!("loading the drop rule: {e}")))?;

    // Only ever the namespace's own address (whatever the log line said).
    if proxy.ip() != std::net::IpAddr::V4(ns.inside) {
        return Err(Failure::new(format!("the server listens on {proxy}, not on {}", ns.inside)));
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind_device(Some(ns.device.as_bytes()))?;
    socket.set_send_buffer_size(4096)?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    s.set_write_timeout(Some(REPLY_TIMEOUT))?;
    // Any destination: the rules refuse the user before a connect.
    let mut sent = wire::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9), b"mallory");
    sent.resize(sent.len() + TRAILING_BYTES, b'x');
    let wrote = s.write_all(&sent).and_then(|()| s.shutdown(Shutdown::Write));
    let mut reply = Vec::new();
    let read = s.read_to_end(&mut reply);
    let dropped = ns.ruleset().map_err(|e| Failure::new(format!("reading the rule's quota: {e}")))?;
    let logged = line_with(&lines, "result=denied by rules", &mut seen);
    drop(server);
    logged?;
    if !dropped.contains("used") || dropped.contains("used 0 bytes") {
        return Err(Failure::new(format!("the drop rule dropped nothing, so this proved nothing: {dropped}")));
    }
    match (read, reply.as_slice()) {
        (Ok(_), r) if r.len() == 8 && r[1] == wire::REJECTED => Ok(Outcome::Pass),
        (read, r) => Err(Failure::new(format!(
            "expected the 8-byte reply 91 and end of file, read {r:02x?} then {read:?} (write: {wrote:?}): \
             the reply was lost, so a reset overtook its retransmission (the server closed with unread \
             input instead of draining); log: {seen:#?}"
        ))),
    }
}
