//! The driver's embedder hooks on an accept loop of the test's own ([`socks4_tokio::Hooks`], as
//! in examples/hooks.rs): the check hook is asked before the users file and the rules, once per
//! request, and its refusal is the connection's logged result.
#![cfg(feature = "server")] // it runs our server: nothing to test in a client-only build
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socks4_core::ReplyCode;
use socks4_core::rules::AccessRequest;
use socks4_server::log::ConnLine;
use socks4_server::reload::LiveConfig;
use socks4_tokio::{Hooks, ServerConfig, Tokio, serve_connection};
use socks4_tools::targets::EchoTarget;
use socks4_tools::wire;

/// Refuses port 25; records the ports it was asked about and each connection's line.
struct Recorder {
    asked: RefCell<Vec<u16>>,
    lines: mpsc::Sender<(Vec<u16>, String)>,
}

impl Hooks for Recorder {
    fn check(&self, _client: SocketAddr, request: &AccessRequest<'_>) -> Result<(), ReplyCode> {
        self.asked.borrow_mut().push(request.port);
        // A `Granted` refusal counts as 91.
        if request.port == 25 { Err(ReplyCode::Granted) } else { Ok(()) }
    }

    fn closed(&self, line: &ConnLine<'_>) {
        let _ = self.lines.send((self.asked.take(), line.to_string()));
    }
}

/// Serves `config` with a [`Recorder`], one connection at a time, on a thread of its own.
fn serve(config: ServerConfig) -> (SocketAddr, mpsc::Receiver<(Vec<u16>, String)>) {
    let live = LiveConfig::new(config).expect("config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let hooks = Rc::new(Recorder { asked: RefCell::default(), lines: tx });
            loop {
                let Ok((stream, peer)) = listener.accept().await else { return };
                let snapshot = live.snapshot();
                let Ok(admission) = snapshot.limiter.admit(peer.ip(), Instant::now()) else { continue };
                serve_connection::<Tokio, _>(stream, peer, &snapshot, admission, &*hooks).await;
            }
        });
    });
    (addr, rx)
}

/// Sends `request`; the reply's code.
fn reply_code(proxy: SocketAddr, request: &[u8]) -> u8 {
    let mut client = TcpStream::connect(proxy).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(request).unwrap();
    let mut reply = [0u8; 8];
    client.read_exact(&mut reply).unwrap();
    reply[1]
}

#[test]
fn the_check_hook_comes_before_the_users_file_once_per_request() {
    let token = "hook-test-token";
    let file = common::users_file("hooks", "alice", token);
    let mut config = ServerConfig::default();
    config.users = Some(file.clone());
    config.rules = socks4_core::rules::Rules::parse("allow any").unwrap();
    let (proxy, lines) = serve(config);
    let target = EchoTarget::start().unwrap();
    let smtp = std::net::SocketAddrV4::new(*target.addr().ip(), 25);
    let line = || lines.recv_timeout(Duration::from_secs(10)).expect("the connection's line");

    // Not a NAME:TOKEN user id: the users file would say 93; the hook refuses first, with 91.
    assert_eq!(reply_code(proxy, &wire::connect(smtp, b"alice")), 91);
    let (asked, text) = line();
    assert_eq!(asked, [25]);
    assert!(text.contains("result=refused by hook (91)"), "{text}");

    // Elsewhere the hook allows, then the users file refuses.
    assert_eq!(reply_code(proxy, &wire::connect(target.addr(), b"alice")), 93);
    assert_eq!(line().0, [target.addr().port()]);

    // A user the file verifies (off the loop): the hook was asked once, before the verification.
    let user = format!("alice:{token}");
    assert_eq!(reply_code(proxy, &wire::connect(target.addr(), user.as_bytes())), 90);
    assert_eq!(line().0, [target.addr().port()], "asked once across the verification");
    let _ = std::fs::remove_file(file);
}
