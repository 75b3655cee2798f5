//! Starting a granted process and relaying its redacted output.
//!
//! On Linux the broker starts a run's *reaper* (`crate::reap`), a child subreaper that starts
//! the command and holds every process the command starts, whatever process group or session
//! it moves to; revocation, timeouts, `stop` and the leader's exit end that whole tree
//! ([`RunHandle`](child::RunHandle)). Elsewhere the command is started directly in a process group of its own,
//! which is what revocation signals. Either way the child gets `PR_SET_PDEATHSIG(SIGKILL)` (so
//! it dies with its parent), the requester's pass-through environment plus the granted values,
//! and nothing else. Its stdout and stderr are
//! pipes, read in chunks of up to [`READ_CHUNK`](relay::READ_CHUNK) bytes, each through its own
//! [`keyveil_redact::RedactStream`], and only redacted bytes ever leave this module. A pipe that
//! turns out busy (one read drained a full default-sized pipe) is enlarged to [`PIPE_BYTES`](relay::PIPE_BYTES)
//! (Linux), at most [`ENLARGED_PIPES_MAX`](relay::ENLARGED_PIPES_MAX) at a time across the broker.
//!
//! The output path copies as little as it can: the redactor appends into a buffer that is moved
//! (not copied) to the relay, written to the client as one frame with a vectored write
//! ([`crate::frame_writer::FrameWriter`]) and then handed back to its reader for reuse.

mod child;
mod conn;
mod relay;
#[cfg(test)]
mod tests;

pub(crate) use child::{DEFAULT_TIMEOUT_SECONDS, KILL_GRACE, SpawnSpec, Started, TreeEnd, start};
pub(crate) use conn::{ABANDON_AFTER, OutputSink, send_final, split_connection};
pub(crate) use relay::{QUIET, relay};
