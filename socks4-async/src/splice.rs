//! Linux: the relay's zero-copy chunk, socket → pipe → socket with `splice(2)`, through a pipe
//! borrowed from the worker thread's pool ([`socks4_sys::LocalPipe`]). The system calls are
//! socks4-sys's; this module only waits for readiness around them.

use std::io;

use socks4_core::Side;
use socks4_sys::LocalPipe;

use crate::relay::{Chunk, Shared, Stop};
use crate::runtime::{Interest, Runtime};

/// Whether `src` → `dst` can be spliced on this runtime (descriptors and readiness waits).
pub(crate) fn possible<R: Runtime>(src: &R::Stream, dst: &R::Stream) -> bool {
    R::fd(src).is_some() && R::fd(dst).is_some() && R::readable(src).is_some() && R::writable(dst).is_some()
}

/// Moves one chunk `src` → pipe → `dst`: splices in what `src` has (up to `limit` and the pipe's
/// capacity), then splices the pipe out to `dst` until it is empty. `src` is not read again before
/// the pipe is empty, which is the back-pressure. Called once `src` was readable. `drained`: the
/// direction's state for [`socks4_sys::Pipe::fill_next`].
pub(crate) async fn chunk<R: Runtime>(
    sh: &Shared<'_, R>,
    from: Side,
    limit: usize,
    drained: &mut bool,
) -> Result<Chunk, Stop> {
    let (src, dst) = (sh.socket(from), sh.socket(from.peer()));
    let (Some(src_fd), Some(dst_fd)) = (R::fd(src), R::fd(dst)) else { return Ok(Chunk::Unsupported) };
    let Ok(mut pipe) = LocalPipe::take() else { return Ok(Chunk::NoPipe) };
    // The pipe is empty, so `WouldBlock` can only mean that `src` has nothing: its readiness is
    // cleared.
    let n = match R::try_io(src, Interest::Readable, || pipe.fill_next(&src_fd, limit, drained)) {
        Ok(0) => return Ok(Chunk::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Chunk::NotReady),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => return Ok(Chunk::Unsupported),
        Err(e) if socks4_sys::at_urgent_mark(&e) => return Ok(Chunk::Copy),
        Err(e) => return Err(sh.error(from, &e)),
    };
    sh.read(from, n)?;
    // A pipe still holding bytes when this returns early (an error, or the relay dropped) is
    // closed by `LocalPipe`, never reused.
    while !pipe.is_empty() {
        if let Some(ready) = R::writable(dst) {
            ready.await.map_err(|e| sh.error(from.peer(), &e))?;
        }
        // The pipe holds bytes, so `WouldBlock` can only mean that `dst` is full.
        match R::try_io(dst, Interest::Writable, || pipe.drain(&dst_fd)) {
            Ok(0) => return Err(sh.error(from.peer(), &io::ErrorKind::WriteZero.into())),
            Ok(m) => sh.written(from, m)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(sh.error(from.peer(), &e)),
        }
    }
    Ok(Chunk::Moved(n))
}
