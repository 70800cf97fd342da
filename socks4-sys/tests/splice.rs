//! splice(2) through pipes across real TCP pairs on 127.0.0.1: whole transfers, half-done ones,
//! and the pool's bounds.
#![cfg(any(target_os = "linux", target_os = "android"))]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socks4_sys::{Pipe, PipePool, sizes};

/// A connected pair on loopback: (connecting end, accepted end).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (b, _) = l.accept().expect("accept");
    (a, b)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Waits (bounded) until `f` stops saying `WouldBlock`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_micros(200));
            }
            other => return other,
        }
    }
}

/// 4 MiB from a writer thread, a → b, spliced b → pipe → c, read at d: every byte arrives in
/// order, the pipe never holds more than its capacity, and end of file shows as `Ok(0)`.
#[test]
fn splices_a_stream_across_a_tcp_pair() {
    let ((mut a, b), (c, mut d)) = (pair(), pair());
    b.set_nonblocking(true).expect("nonblocking");
    c.set_nonblocking(true).expect("nonblocking");
    let data = pattern(4 << 20);
    let sent = data.clone();
    let writer = thread::spawn(move || {
        a.write_all(&sent).expect("write");
        a.shutdown(Shutdown::Write).expect("shutdown");
    });
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        d.read_to_end(&mut got).expect("read");
        got
    });
    let mut pipe = Pipe::new().expect("pipe");
    assert!(pipe.capacity() >= 4096);
    let mut moved = 0;
    let mut largest = 0;
    loop {
        let n = retry(|| pipe.fill(&b, usize::MAX)).expect("fill");
        if n == 0 {
            break;
        }
        assert!(n <= pipe.capacity());
        assert_eq!(pipe.held(), n);
        largest = largest.max(n);
        while !pipe.is_empty() {
            moved += retry(|| pipe.drain(&c)).expect("drain");
        }
    }
    assert_eq!(moved, data.len());
    c.shutdown(Shutdown::Write).expect("shutdown");
    writer.join().expect("writer");
    let got = reader.join().expect("reader");
    assert!(got == data, "bytes lost or reordered ({} of {})", got.len(), data.len());
    assert!(largest > 1, "splices moved more than a byte at a time");
}

#[test]
fn fill_is_bounded_by_max_and_would_block_when_the_source_is_empty() {
    let ((mut a, b), (c, mut d)) = (pair(), pair());
    b.set_nonblocking(true).expect("nonblocking");
    let mut pipe = Pipe::new().expect("pipe");
    assert_eq!(pipe.fill(&b, 1024).expect_err("nothing sent").kind(), io::ErrorKind::WouldBlock);
    assert!(pipe.is_empty());
    a.write_all(&pattern(1000)).expect("write");
    assert_eq!(retry(|| pipe.fill(&b, 10)).expect("fill"), 10, "at most `max`");
    assert_eq!(pipe.drain(&c).expect("drain"), 10);
    assert_eq!(pipe.drain(&c).expect("drain empty"), 0, "an empty pipe drains nothing");
    let mut got = [0; 10];
    d.read_exact(&mut got).expect("read");
    assert_eq!(&got[..], &pattern(1000)[..10]);
}

/// A destination that takes nothing leaves the pipe holding its bytes: a drain would block, the
/// pipe refuses another fill (so a direction never holds more than one pipe's worth), and the
/// pool closes it rather than keep it, so the stranded bytes never reach another connection.
#[test]
fn a_half_done_transfer_strands_its_bytes_in_a_pipe_the_pool_will_not_reuse() {
    let ((mut a, b), (c, d)) = (pair(), pair());
    b.set_nonblocking(true).expect("nonblocking");
    c.set_nonblocking(true).expect("nonblocking");
    // Fill c's send buffer and d's receive buffer (d never reads) until c takes nothing more.
    let junk = vec![0u8; 64 * 1024];
    let mut stuffed = 0usize;
    loop {
        match (&c).write(&junk) {
            Ok(n) => stuffed += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
        assert!(stuffed < 1 << 30, "loopback buffers do not fill");
    }
    a.write_all(&pattern(50_000)).expect("write");
    let mut pool = PipePool::with_limits(4, sizes::PIPE_LEN);
    let mut pipe = pool.take().expect("pipe");
    let filled = retry(|| pipe.fill(&b, usize::MAX)).expect("fill");
    assert!(filled > 0);
    assert_eq!(pipe.drain(&c).expect_err("c is full").kind(), io::ErrorKind::WouldBlock);
    assert_eq!(pipe.held(), filled, "nothing left the pipe");
    assert_eq!(pipe.fill(&b, 1).expect_err("not empty").kind(), io::ErrorKind::InvalidInput);
    assert!(!pool.put(pipe), "a pipe holding bytes is closed, not kept");
    assert!(pool.is_empty());
    let fresh = pool.take().expect("pipe");
    assert!(fresh.is_empty(), "the next chunk gets an empty pipe");
    drop(d);
}

/// Splicing from a descriptor the kernel cannot splice from (a directory) says `Unsupported` and
/// moves nothing: the caller copies instead.
#[test]
fn an_unspliceable_source_is_unsupported() {
    let dir = std::fs::File::open(env!("CARGO_MANIFEST_DIR")).expect("open the crate's directory");
    let mut pipe = Pipe::new().expect("pipe");
    let e = pipe.fill(&dir, 1024).expect_err("a directory");
    assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    assert!(pipe.is_empty());
}

#[test]
fn the_pool_reuses_empty_pipes_and_keeps_at_most_its_bound() {
    let mut pool = PipePool::with_limits(3, 64 * 1024);
    let pipe = pool.take().expect("pipe");
    let fd = fds(&pipe);
    assert!(pool.put(pipe));
    let again = pool.take().expect("pipe");
    assert_eq!(fds(&again), fd, "the kept pipe is reused");
    let mut pipes = vec![again];
    pipes.extend((0..5).map(|_| pool.take().expect("pipe")));
    let kept = pipes.into_iter().map(|p| pool.put(p)).filter(|&k| k).count();
    assert_eq!((kept, pool.len()), (3, 3));
    pool.clear();
    assert!(pool.is_empty());
}

#[test]
fn a_pipe_is_small_enough_to_keep_per_direction() {
    assert_eq!(size_of::<Option<Pipe>>(), 16);
}

#[test]
fn a_pipe_is_non_blocking_and_close_on_exec_and_sized() {
    let pipe = Pipe::with_capacity(sizes::PIPE_LEN).expect("pipe");
    // The kernel may refuse the size (pipe-user-pages-soft) but never gives less than a page.
    assert!(pipe.capacity() >= 4096);
    assert!(pipe.capacity() <= sizes::PIPE_LEN.max(64 * 1024));
    let small = Pipe::with_capacity(4096).expect("pipe");
    assert_eq!(small.capacity(), 4096);
}

/// A pipe's descriptor numbers (its `Debug` form), to tell pipes apart.
fn fds(pipe: &Pipe) -> String {
    format!("{pipe:?}")
}

/// A splice stops at TCP urgent data's mark and never passes it: `fill` says so
/// (`at_urgent_mark`) instead of `WouldBlock` (bytes wait behind the mark) or `Ok(0)` (after the
/// FIN), one read with `SO_OOBINLINE` passes it with the urgent byte in its place, and splicing
/// then goes on to the end of file.
#[test]
fn a_splice_at_urgent_data_hands_one_read_to_a_copy() {
    let (a, mut b) = pair();
    socks4_sys::socket::urgent_inline(&socket2::SockRef::from(&b)).expect("SO_OOBINLINE");
    b.set_nonblocking(true).expect("nonblocking");
    (&a).write_all(b"before").expect("write");
    assert_eq!(socket2::SockRef::from(&a).send_out_of_band(b"U").expect("send MSG_OOB"), 1);
    (&a).write_all(b"after").expect("write");
    let mut pipe = Pipe::new().expect("pipe");
    assert_eq!(retry(|| pipe.fill(&b, usize::MAX)).expect("fill"), 6, "up to the mark");
    let mut pipe = Pipe::new().expect("a fresh pipe"); // (the first one's bytes are not checked)
    thread::sleep(Duration::from_millis(20)); // the rest has come
    let err = pipe.fill(&b, usize::MAX).expect_err("a splice at the mark moves nothing");
    assert!(socks4_sys::at_urgent_mark(&err), "{err:?}");
    assert!(pipe.is_empty());
    a.shutdown(Shutdown::Write).expect("shutdown");
    thread::sleep(Duration::from_millis(20));
    let err = pipe.fill(&b, usize::MAX).expect_err("after the FIN still: not an end of file");
    assert!(socks4_sys::at_urgent_mark(&err), "{err:?}");
    let mut got = [0u8; 16];
    let n = b.read(&mut got).expect("a copy read passes the mark");
    assert_eq!(&got[..n], b"Uafter", "the urgent byte in its place");
    assert_eq!(pipe.fill(&b, usize::MAX).expect("end of file"), 0);
}

/// `fill_next` after a fill that drained the socket peeks instead of splicing: `WouldBlock` while
/// nothing came, the bytes once they come, and `Ok(0)` at end of file (never `WouldBlock`, which
/// would have an edge-triggered caller wait for a FIN already seen).
#[test]
fn fill_next_peeks_first_and_never_hides_an_end_of_file() {
    let (mut a, b) = pair();
    b.set_nonblocking(true).expect("nonblocking");
    let mut pipe = Pipe::new().expect("pipe");
    let mut drained = false;
    a.write_all(b"one").expect("write");
    assert_eq!(retry(|| pipe.fill_next(&b, usize::MAX, &mut drained)).expect("fill"), 3, "a short fill");
    assert!(drained);
    let mut pipe = Pipe::new().expect("a fresh pipe");
    let e = pipe.fill_next(&b, usize::MAX, &mut true).expect_err("nothing came");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    a.write_all(b"two").expect("write");
    assert_eq!(retry(|| pipe.fill_next(&b, usize::MAX, &mut true)).expect("refill"), 3);
    let mut pipe = Pipe::new().expect("a fresh pipe");
    a.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(retry(|| pipe.fill_next(&b, usize::MAX, &mut true)).expect("end of file"), 0);
}

/// A reset after data stays a reset through `fill_next` (after a short fill or not): the peek that asks whether more
/// came takes the socket's pending error, so it must be the answer (an end of file instead would
/// make a cut-off transfer look complete).
#[test]
fn a_reset_after_data_is_an_error_not_an_end_of_file() {
    for after_short in [true, false] {
        let (a, b) = pair();
        b.set_nonblocking(true).expect("nonblocking");
        (&a).write_all(b"data").expect("write");
        socket2::SockRef::from(&a).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
        thread::sleep(Duration::from_millis(20));
        let mut pipe = Pipe::new().expect("pipe");
        assert_eq!(retry(|| pipe.fill(&b, usize::MAX)).expect("fill"), 4);
        drop(a); // a reset
        thread::sleep(Duration::from_millis(20));
        let mut pipe = Pipe::new().expect("a fresh pipe");
        let got = pipe.fill_next(&b, usize::MAX, &mut { after_short });
        let e = got.expect_err("a reset, not an end of file");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "after a short fill: {after_short}");
    }
}
