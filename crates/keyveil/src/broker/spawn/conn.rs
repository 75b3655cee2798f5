//! The client's connection of a run: split into a frame reader and the sink output frames
//! and the final reply are written to.

use std::time::Duration;

use super::child::KILL_GRACE;

/// How long a stopped run (revoked, timed out, client hung up) waits on a client that does not
/// read its output or its exit reply before abandoning the connection and ending without it.
pub(crate) const ABANDON_AFTER: Duration = Duration::from_secs(KILL_GRACE.as_secs() * 2);

/// Where streamed output frames go: the write half of the client's connection.
pub(crate) type OutputSink = crate::frame_writer::FrameWriter<tokio::net::unix::OwnedWriteHalf>;

/// The read side of a client connection after [`split_connection`].
pub(crate) type ConnReader =
    tokio_util::codec::Framed<tokio::net::unix::OwnedReadHalf, keyveil_proto::FrameCodec>;

/// Splits a client connection into its frame reader (keeping bytes already read past the
/// request) and an [`OutputSink`] for the replies and output frames.
pub(crate) fn split_connection(
    framed: tokio_util::codec::Framed<tokio::net::UnixStream, keyveil_proto::FrameCodec>,
) -> (ConnReader, OutputSink) {
    let old = framed.into_parts();
    // Nothing is pending: every frame written before this point was flushed by `send`.
    debug_assert!(old.write_buf.is_empty());
    let (rd, wr) = old.io.into_split();
    let mut parts = tokio_util::codec::FramedParts::new::<bytes::Bytes>(rd, old.codec);
    parts.read_buf = old.read_buf;
    (
        tokio_util::codec::Framed::from_parts(parts),
        crate::frame_writer::FrameWriter::new(wr),
    )
}

/// Sends the final reply of a run, giving up on a client that has not taken it within
/// `bound` (the frame may be cut; the connection is about to be closed anyway). Without a
/// bound the write waits for the client like every output frame. The run path bounds it by
/// [`ABANDON_AFTER`] once a run was stopped (revoked, timed out, client hung up). Returns
/// whether the reply was sent.
pub(crate) async fn send_final<W: tokio::io::AsyncWrite + Unpin>(
    sink: &mut crate::frame_writer::FrameWriter<W>,
    body: bytes::Bytes,
    bound: Option<Duration>,
) -> bool {
    let send = sink.send(body);
    match bound {
        Some(limit) => matches!(tokio::time::timeout(limit, send).await, Ok(Ok(()))),
        None => send.await.is_ok(),
    }
}
