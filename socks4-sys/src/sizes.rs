//! The sizes the relays share, in one place: how big a copy buffer or a pipe is, how many of each
//! a worker keeps for reuse, and what one direction holds at most.
//!
//! Every figure here bounds memory or descriptors per connection or per worker; an idle relayed
//! connection holds neither a buffer nor a pipe (both are borrowed only while bytes are in
//! flight), so these cost a worker at most `COPY_BUFS_KEPT × COPY_BUF_LEN` bytes and
//! `2 × PIPES_KEPT` descriptors while nothing flows.

/// Size of one copy buffer: the most one copying read moves. Also the `buffer_len` a relay passes
/// to [`SplicePolicy::decide`](crate::SplicePolicy::decide).
pub const COPY_BUF_LEN: usize = 16 * 1024;

/// Free copy buffers a worker keeps for reuse ([`BufPool`](crate::BufPool)); beyond these,
/// returned buffers are freed.
pub const COPY_BUFS_KEPT: usize = 64;

/// The capacity asked of each pipe, and so the most one splice moves: a spliced direction never
/// holds more than this in the kernel on the proxy's behalf. The kernel may refuse it (a user over
/// `/proc/sys/fs/pipe-user-pages-soft`); the pipe then keeps the size it has
/// ([`Pipe::capacity`](crate::Pipe::capacity)).
pub const PIPE_LEN: usize = 256 * 1024;

/// Free pipes a worker keeps for reuse ([`PipePool`](crate::PipePool)), two descriptors each;
/// beyond these, returned pipes are closed.
pub const PIPES_KEPT: usize = 16;

/// The most bytes one direction of one connection holds in the proxy at once, whether in a pipe
/// or in a buffer waiting for its destination: a relay reads no more from a source until what it
/// holds is written.
pub const MAX_PENDING: usize = PIPE_LEN;
