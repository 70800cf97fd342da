//! The targets themselves, over real sockets (no proxy involved).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use socks4_tools::checksum::{Fnv1a, pattern, pattern_checksum};
use socks4_tools::targets::{EchoTarget, Report, SinkTarget, SourceTarget, closed_port};

const T: Duration = Duration::from_secs(10);

fn connect(addr: std::net::SocketAddrV4) -> TcpStream {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), T).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    s.set_write_timeout(Some(T)).expect("timeout");
    s
}

fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read to EOF");
    v
}

#[test]
fn echo_echoes_and_propagates_half_close() {
    let echo = EchoTarget::start().expect("echo");
    let mut s = connect(echo.addr());
    let mut data = vec![0u8; 300_000];
    pattern(9, 0, &mut data);
    let mut w = s.try_clone().expect("clone");
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).expect("write");
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let back = read_to_end(&mut s);
    writer.join().expect("writer");
    assert_eq!(back.len(), data.len());
    assert!(back == data);
}

#[test]
fn echo_serves_many_connections() {
    let echo = EchoTarget::start().expect("echo");
    let mut conns: Vec<_> = (0..20).map(|_| connect(echo.addr())).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("conn {i}");
        s.write_all(msg.as_bytes()).expect("write");
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(buf, msg.as_bytes());
    }
}

#[test]
fn sink_reports_count_and_checksum() {
    let sink = SinkTarget::start().expect("sink");
    let mut s = connect(sink.addr());
    s.write_all(b"hello ").expect("write");
    s.write_all(b"sink").expect("write");
    drop(s);
    let r = sink.recv_report(T).expect("report");
    let want = Fnv1a::of(b"hello sink");
    assert_eq!(r, Report { bytes: 10, checksum: want.value(), eof: true });
}

#[test]
fn replying_sink_answers_after_eof() {
    let sink = SinkTarget::replying().expect("sink");
    let mut s = connect(sink.addr());
    let mut data = vec![0u8; 1 << 20];
    pattern(4, 0, &mut data);
    s.write_all(&data).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let reply = read_to_end(&mut s);
    let arr: [u8; 16] = reply.as_slice().try_into().expect("16-byte reply");
    let r = Report::from_bytes(&arr);
    let want = pattern_checksum(4, 1 << 20);
    assert_eq!((r.bytes, r.checksum), (want.count(), want.value()));
    assert_eq!(sink.recv_report(T).expect("report").bytes, 1 << 20);
}

#[test]
fn source_sends_then_still_reads() {
    let source = SourceTarget::start(200_000, 5).expect("source");
    let mut s = connect(source.addr());
    let got = read_to_end(&mut s);
    assert_eq!(Fnv1a::of(&got), pattern_checksum(5, 200_000));
    s.write_all(b"after eof").expect("write after the source's half-close");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let r = source.recv_report(T).expect("report");
    assert_eq!(r, Report { bytes: 9, checksum: Fnv1a::of(b"after eof").value(), eof: true });
}

#[test]
fn closed_port_refuses() {
    let addr = closed_port().expect("closed port");
    let r = TcpStream::connect_timeout(&SocketAddr::V4(addr), T);
    assert!(r.is_err(), "something listens on {addr}");
}

#[test]
fn drop_stops_live_connections() {
    let echo = EchoTarget::start().expect("echo");
    let addr = echo.addr();
    let mut s = connect(addr);
    drop(echo);
    let mut buf = [0u8; 1];
    // The live connection was shut down: EOF (or reset), not a timeout.
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected {n} bytes"),
        Err(e) => {
            assert!(!matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "no close: {e}")
        }
    }
    assert!(TcpStream::connect_timeout(&SocketAddr::V4(addr), T).is_err(), "still listening");
}
