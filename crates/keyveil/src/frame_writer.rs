//! Writing frames of the broker protocol ([`keyveil_proto::frame`]) onto a connection.
//!
//! Kept apart from `keyveil-proto`, which builds without tokio (the `frame_decoder` fuzz
//! target builds it alone).

use bytes::Bytes;
use keyveil_proto::{FrameError, MAX_FRAME};

/// Writes frames onto a byte stream without copying their payload: the 4-byte length and the
/// tag byte go out together with the payload in vectored writes (the `Framed`
/// sink copies every payload into its own buffer first). Readers decode the frames with the
/// same codec as before ([`keyveil_proto::FrameCodec`]).
pub(crate) struct FrameWriter<W> {
    io: W,
    /// A frame write was started and not finished (its future was dropped): the stream is
    /// no longer well formed and every later write fails.
    torn: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps the write side of a connection.
    pub(crate) fn new(io: W) -> FrameWriter<W> {
        FrameWriter { io, torn: false }
    }

    /// Writes an already tagged frame body (the output of [`keyveil_proto::Frame::json`] or [`keyveil_proto::Frame::encode`]).
    pub(crate) async fn send(&mut self, body: Bytes) -> std::io::Result<()> {
        let Some((&tag, payload)) = body.split_first() else {
            return Err(std::io::Error::other(FrameError::Empty));
        };
        self.write_frame(tag, payload).await
    }

    /// Writes `payload` as one or more frames tagged `tag` (a payload longer than
    /// [`MAX_FRAME`] − 1 bytes is split, so the reader's length limit always holds).
    pub(crate) async fn write_frame(&mut self, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut rest = payload;
        loop {
            let (now, later) = rest.split_at(rest.len().min(MAX_FRAME - 1));
            self.write_one(tag, now).await?;
            if later.is_empty() {
                return Ok(());
            }
            rest = later;
        }
    }

    async fn write_one(&mut self, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.torn {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let len = u32::try_from(payload.len() + 1).map_err(std::io::Error::other)?;
        self.torn = true;
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&len.to_be_bytes());
        header[4] = tag;
        let mut head: &[u8] = &header;
        let mut body = payload;
        while !head.is_empty() {
            let n = self
                .io
                .write_vectored(&[std::io::IoSlice::new(head), std::io::IoSlice::new(body)])
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = head.get(from_head..).unwrap_or_default();
            body = body.get(n - from_head..).unwrap_or_default();
        }
        self.io.write_all(body).await?;
        self.torn = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use keyveil_proto::{Frame, TAG_STDERR, TAG_STDOUT};

    #[tokio::test]
    async fn frame_writer_output_decodes_with_the_codec_and_splits_big_payloads() {
        use futures::StreamExt;
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let big = vec![7u8; MAX_FRAME + 10];
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            w.write_frame(TAG_STDOUT, b"hello").await.unwrap();
            w.send(Frame::json(&serde_json::json!({"x": 1})).unwrap())
                .await
                .unwrap();
            w.write_frame(TAG_STDERR, &big).await.unwrap();
        });
        let mut r = tokio_util::codec::FramedRead::new(b, keyveil_proto::FrameCodec);
        let mut got = Vec::new();
        while let Some(f) = r.next().await {
            got.push(Frame::decode(f.unwrap()).unwrap());
        }
        writer.await.unwrap();
        assert!(matches!(&got[0], Frame::Stdout(p) if &p[..] == b"hello"));
        assert!(matches!(&got[1], Frame::Json(p) if &p[..] == br#"{"x":1}"#));
        let err: usize = got[2..]
            .iter()
            .map(|f| match f {
                Frame::Stderr(p) => {
                    assert!(p.iter().all(|&b| b == 7));
                    p.len()
                }
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(got.len(), 4);
        assert_eq!(err, MAX_FRAME + 10);
    }

    #[tokio::test]
    async fn frame_writer_refuses_every_write_after_a_torn_frame() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = FrameWriter::new(a);
        // The reader does not read: the write stops mid-frame and is given up on.
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            w.write_frame(TAG_STDOUT, &[1u8; 100]),
        )
        .await;
        assert!(cut.is_err(), "the write should have blocked");
        // Room again, yet nothing more may follow the cut frame.
        let mut drained = [0u8; 64];
        let n = b.read(&mut drained).await.unwrap();
        assert!(n > 0);
        let e = w.write_frame(TAG_STDOUT, b"x").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        let e = w
            .send(Frame::json(&serde_json::json!({"x": 1})).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        // A finished frame leaves the writer usable.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        w.write_frame(TAG_STDOUT, b"one").await.unwrap();
        w.write_frame(TAG_STDOUT, b"two").await.unwrap();
        drop(w);
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 2 * (4 + 1 + 3));
    }
}
