//! Adapter-specific server behaviour: connection limit, graceful shutdown, the binary's refusal
//! to run as an open proxy, reuseport mode and the idle timeout (the shared checks of
//! `socks4_tools::binary` are in tests/binary.rs).
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{closes_within, echo, open_connect, start_with, test_config};
use socks4_tools::targets::EchoTarget;

#[test]
fn max_connections_closes_excess_and_keeps_serving() {
    let mut config = test_config();
    config.max_connections = 2;
    let (proxy, handle) = start_with(config);
    let target = EchoTarget::start().unwrap();
    let mut a = open_connect(proxy, target.addr());
    let mut b = open_connect(proxy, target.addr());
    echo(&mut a, b"a");
    echo(&mut b, b"b");

    // The third is closed at once, without a reply.
    let mut c = TcpStream::connect(proxy).unwrap();
    let _ = c.write_all(&socks4_tools::wire::connect(target.addr(), b"third"));
    assert!(closes_within(&mut c, Duration::from_secs(3)), "the excess connection stayed open");
    assert_eq!(handle.stats().over_limit, 1);

    // The first two still work; after one ends, a new one is served.
    echo(&mut a, b"still here");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().active > 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let mut d = open_connect(proxy, target.addr());
    echo(&mut d, b"d");
    assert_eq!(handle.stats().over_limit, 1);
    handle.shutdown();
}

#[test]
fn graceful_shutdown_finishes_a_live_transfer() {
    const CHUNKS: usize = 10;
    const CHUNK: usize = 64 * 1024;
    // A target that sends CHUNKS chunks slowly, then closes.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = match slow.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let sender = thread::spawn(move || {
        let (mut s, _) = slow.accept().unwrap();
        for i in 0..CHUNKS {
            s.write_all(&vec![i as u8; CHUNK]).unwrap();
            thread::sleep(Duration::from_millis(100));
        }
    });

    let mut config = test_config();
    config.timeouts.shutdown_grace = Duration::from_secs(10);
    let (proxy, handle) = start_with(config);
    let mut client = open_connect(proxy, target);
    let mut first = [0u8; 1];
    client.read_exact(&mut first).unwrap();

    let reader = thread::spawn(move || {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).map(|_| rest.len() + 1)
    });
    let started = Instant::now();
    handle.shutdown();
    let took = started.elapsed();
    assert_eq!(reader.join().unwrap().unwrap(), CHUNKS * CHUNK, "the transfer was cut short");
    sender.join().unwrap();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    // The server has stopped.
    assert!(TcpStream::connect(proxy).is_err(), "still accepting after shutdown");
}

#[test]
fn graceful_shutdown_closes_relays_after_the_grace_period() {
    let mut config = test_config();
    config.timeouts.shutdown_grace = Duration::from_millis(300);
    let (proxy, handle) = start_with(config);
    let target = EchoTarget::start().unwrap();
    let mut client = open_connect(proxy, target.addr());
    echo(&mut client, b"hello");
    let started = Instant::now();
    handle.shutdown();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(closes_within(&mut client, Duration::from_secs(3)), "relay left open after shutdown");
}

#[test]
fn binary_refuses_an_open_proxy() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_socks4-tokio"))
        .args(["--listen", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the binary kept running on 0.0.0.0 without rules");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("open proxy"), "stderr: {stderr}");
    assert!(stderr.contains("--allow"), "no hint how to write a rule: {stderr}");
}

#[test]
fn reuseport_mode_serves_connect() {
    let mut config = test_config();
    config.reuseport = true;
    let (proxy, handle) = start_with(config);
    let target = EchoTarget::start().unwrap();
    for i in 0..8u8 {
        let mut s = open_connect(proxy, target.addr());
        echo(&mut s, &[i; 100]);
    }
    assert_eq!(handle.stats().accepted, 8);
    handle.shutdown();
    assert!(TcpStream::connect(proxy).is_err(), "still accepting after shutdown");
}

#[test]
fn idle_timeout_closes_an_idle_relay() {
    let mut config = test_config();
    config.timeouts.idle = Duration::from_millis(500);
    let (proxy, _handle) = start_with(config);
    let target = EchoTarget::start().unwrap();
    let mut s = open_connect(proxy, target.addr());
    // Activity keeps it open past the idle timeout.
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(200));
        echo(&mut s, b"ping");
    }
    let idle_from = Instant::now();
    assert!(closes_within(&mut s, Duration::from_secs(5)), "idle relay not closed");
    assert!(idle_from.elapsed() >= Duration::from_millis(400));
}

#[test]
fn accept_emfile_is_logged_and_retried() {
    // Run the binary with a tiny descriptor limit, exhaust it with idle clients, then free them:
    // the server must log the accept error, survive, and serve again.
    // Port 0, and the address read back from the log: a port picked by binding and dropping a listener
    // could be taken by another test before the binary binds it.
    let script = format!(
        "ulimit -n 40 && exec {} --listen 127.0.0.1:0 --workers 1 --handshake-timeout 30s \
         --log-level warn,socks4_server::cli=info",
        env!("CARGO_BIN_EXE_socks4-tokio")
    );
    let mut child =
        Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    let proxy: std::net::SocketAddr = first
        .rsplit_once("listening on ")
        .and_then(|(_, addr)| addr.trim().parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {first:?}"));
    let rest = thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    // The workers start after the listen line: prove they run (their runtimes hold descriptors)
    // before the hogs take every descriptor left, or a slow start fails for want of one.
    let target = EchoTarget::start().unwrap();
    assert!((0..50).any(|_| try_echo(proxy, target.addr()).is_ok() || {
        thread::sleep(Duration::from_millis(100));
        false
    }));
    let hogs: Vec<TcpStream> = (0..60).filter_map(|_| TcpStream::connect(proxy).ok()).collect();
    thread::sleep(Duration::from_millis(500));
    drop(hogs);
    thread::sleep(Duration::from_millis(500));

    let served = (0..50).any(|_| {
        let ok = try_echo(proxy, target.addr()).is_ok();
        if !ok {
            thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &rest.join().unwrap();
    assert!(still_running, "the server exited: {log}");
    assert!(served, "the server did not serve after the descriptors were freed: {log}");
    assert!(log.contains("accept failed"), "no accept error logged: {log}");
    let errors = log.matches("accept failed").count();
    assert!(errors < 100, "{errors} accept errors logged: a busy loop?");
}

/// CONNECT through `proxy` to an echo `target` and one round trip, without panicking.
fn try_echo(proxy: std::net::SocketAddr, target: std::net::SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&socks4_tools::wire::connect(target, b"test"))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    if reply[1] != 90 {
        return Err(std::io::Error::other(format!("reply {reply:?}")));
    }
    s.write_all(b"alive")?;
    let mut back = [0u8; 5];
    s.read_exact(&mut back)?;
    if &back != b"alive" {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}
