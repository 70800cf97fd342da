//! # socks4-core
//!
//! A sans-IO implementation of the SOCKS4 and SOCKS4a proxy protocol: a zero-copy codec, the server
//! and client handshakes as state machines, and access rules. It never touches a socket, a clock or a
//! thread: `no_std` with `alloc` (only the rules own heap data), `#![forbid(unsafe_code)]`,
//! and no allocation anywhere on the handshake or relay path. The adapters `socks4-tokio`, `socks4-smol` and
//! `socks4-std` wrap it into servers; what running a server takes beyond the protocol (config file,
//! command line, logs) is in the `socks4-server` crate, not here.
//!
//! - Codec: [`parse_request`] / [`Request::encode`], [`Reply::parse`] / [`Reply::to_bytes`]; parsing
//!   reports [`Status::Partial`] until a message is whole, and errors as soon as it cannot become valid.
//! - [`ServerHandshake`]: bytes and results in, [`Output`] actions out (send a reply, resolve, authorize,
//!   ask the client's identd, connect, listen for a BIND peer, relay, close), deadlines on the
//!   caller's clock.
//! - [`ClientHandshake`]: builds a CONNECT (to a [`Target`]) or BIND request (4 or 4a) and reads the
//!   reply or replies. With `std`, `ConnectError` is the error of the adapters' client connectors.
//! - [`Relay`]: the bookkeeping of the relay that follows a granted request (byte counts,
//!   half-close and reset propagation, idle deadline), driven with the caller's own I/O.
//! - [`rules`]: access rules as plain data, with a text form; [`Limits`] and [`Timeouts`] bound the
//!   handshake.
//! - [`ident`]: SOCKS4's own authentication, RFC 1413 ident: the query for the client host's identd
//!   and a zero-copy parser for its reply. A rule with `ident` (`allow from 10.0.0.0/8 ident`) makes
//!   the handshake ask for it ([`Output::Ident`]) and refuse with 92 or 93 as the protocol says.
//! - [`proxy_header`]: the PROXY protocol header (v1 and v2) a load balancer sends before the
//!   request: an incremental, allocation-free parser that says where the header ends.
//!
//! ## Example: a client and a server handshake talking in memory
//!
//! ```
//! use core::net::SocketAddrV4;
//! use core::time::Duration;
//! use socks4_core::{ClientEvent, ClientHandshake, Limits, Output, ServerHandshake, Target, Timeouts};
//! use socks4_core::rules::Rules;
//!
//! let now = Duration::ZERO;
//! let rules = Rules::parse("allow from 127.0.0.0/8")?;
//! let mut client = ClientHandshake::connect_host("localhost", 7, b"alice")?;
//! let mut server = ServerHandshake::new(now, Limits::default(), Timeouts::default());
//!
//! // The client writes its request and some payload in one go; the server reads it in two pieces.
//! let mut wire = client.request_bytes().to_vec();
//! wire.extend_from_slice(b"hello");
//! let first = server.handle_input(now, &wire[..3]);
//! assert!(server.wants_input());
//! let second = server.handle_input(now, &wire[3..]);
//! assert!(!server.wants_input());
//! assert_eq!(&wire[first + second..], b"hello"); // early data: relay it first
//!
//! // Drive the server: it asks us to resolve, authorize, connect and reply.
//! let mut to_client = Vec::new();
//! loop {
//!     match server.poll_output() {
//!         Output::Resolve { host, .. } => {
//!             assert_eq!(host, "localhost");
//!             server.handle_resolved(now, Ok([127, 0, 0, 1].into()))?;
//!         }
//!         Output::Authorize(_) => {
//!             server.authorize(now, &rules, [127, 0, 0, 1].into())?;
//!         }
//!         Output::Connect(target) => {
//!             assert_eq!(target, Target::Addr("127.0.0.1:7".parse()?));
//!             server.handle_connected(now, Ok("127.0.0.1:50000".parse()?))?;
//!         }
//!         Output::Send(reply) => to_client.extend_from_slice(&reply.to_bytes()),
//!         Output::Relay => break,
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//!
//! // The client reads the reply; whatever follows it is relayed data.
//! to_client.extend_from_slice(b"hello");
//! let (used, event) = client.handle_input(&to_client)?;
//! assert_eq!(event, Some(ClientEvent::Granted(SocketAddrV4::new([127, 0, 0, 1].into(), 50000))));
//! assert_eq!(&to_client[used..], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Features
//!
//! No feature is on by default, and with none the crate has no dependencies.
//!
//! - `std`: helpers that need the OS: `ConnectError` (the error of a client connector) with
//!   `ClientEvent::granted` and `ClientEvent::bind_listening` returning it; `From<&io::Error>` for
//!   `Failure` and for `Fault`, `From<&ConnectError> for Failure`, `From<Misuse> for io::Error`;
//!   and the `driver` module (`Clock` for deadlines as `Instant`, `connect_candidates` and
//!   `Candidates` for a name lookup's addresses in the order to try them).
//! - `bytes`: `Request::encode_to` into any `bytes::BufMut`.
//!
//! `core::error::Error` is implemented for every error type either way, and the feature-free
//! [`ClientEvent::into_granted`] / [`ClientEvent::into_bind_listening`] turn an event into a
//! result without `std`.
#![cfg_attr(
    feature = "std",
    doc = "\nWith `std` (on in this build): [`ConnectError`], [`driver`], [`driver::Clock`], [`driver::Candidates`].\n"
)]
#![cfg_attr(feature = "bytes", doc = "\nWith `bytes` (on in this build): [`Request::encode_to`].\n")]
//!
//! ## Is this SOCKS4? Sniffing the first bytes
//!
//! A listener that serves several protocols can tell SOCKS4 from the first byte or two:
//! [`parse_request`] fails with [`ParseError::BadVersion`] at byte 0 unless it is 4, and with
//! [`ParseError::BadCommand`] at byte 1 unless it is CONNECT or BIND. (SOCKS5 starts with 5, TLS
//! with 0x16, HTTP with a letter.)
//!
//! ```
//! use socks4_core::{parse_request, Limits, ParseError, Status};
//! fn is_socks4(first_bytes: &[u8]) -> Option<bool> {
//!     match parse_request(first_bytes, &Limits::default()) {
//!         Ok(Status::Partial) if first_bytes.len() < 2 => None, // read more
//!         Err(ParseError::BadVersion(_) | ParseError::BadCommand(_)) => Some(false),
//!         _ => Some(true), // a SOCKS4 request, whole or not, valid or not: hand it to a ServerHandshake
//!     }
//! }
//! assert_eq!(is_socks4(b"\x04"), None);
//! assert_eq!(is_socks4(b"\x04\x01\x00\x50"), Some(true));
//! assert_eq!(is_socks4(b"\x05\x01\x00"), Some(false));
//! assert_eq!(is_socks4(b"CONNECT example.com:443 HTTP/1.1\r\n"), Some(false));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Every fallible public function says when it fails (clippy, `-D warnings` in CI).
#![warn(clippy::missing_errors_doc)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod client;
#[cfg(feature = "std")]
#[cfg_attr(docsrs, doc(cfg(feature = "std")))]
pub mod driver;
mod error;
pub mod ident;
mod proxy_addr;
pub mod proxy_header;
mod relay;
mod reply;
mod request;
pub mod rules;
mod server;
mod target;
mod timeouts;

pub use client::{ClientError, ClientEvent, ClientHandshake, NotGranted};
pub use error::{EncodeError, Misuse, ParseError};
pub use proxy_addr::ProxyAddr;
pub use relay::{Fault, Relay, RelayEnd, RelayOutput, Side};
pub use reply::{REPLY_LEN, Reply, ReplyCode};
pub use request::{
    Command, Dest, Limits, MAX_REQUEST_LEN, Request, SOCKS4_VERSION, SOCKS4A_MARKER, Status, parse_request,
};
pub use rules::{AccessRequest, Action};
pub use server::{CloseReason, Failure, Names, Output, ServerHandshake};
#[cfg(feature = "std")]
pub use target::ConnectError;
pub use target::Target;
pub use timeouts::Timeouts;

/// The README's examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
