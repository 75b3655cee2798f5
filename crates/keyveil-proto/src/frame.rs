//! Frames: the tag byte after the length prefix, and the length-delimited codec itself.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Largest frame accepted in either direction, in bytes (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Frame tag of a JSON document.
pub const TAG_JSON: u8 = 0;
/// Frame tag of redacted stdout bytes.
pub const TAG_STDOUT: u8 = 1;
/// Frame tag of redacted stderr bytes.
pub const TAG_STDERR: u8 = 2;

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// A JSON document (still to be parsed as [`Request`](crate::Request) or [`Reply`](crate::Reply)).
    Json(Bytes),
    /// Redacted stdout bytes.
    Stdout(Bytes),
    /// Redacted stderr bytes.
    Stderr(Bytes),
}

/// Errors decoding a frame body; the peer is at fault.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Zero-length frame (no tag byte).
    #[error("empty frame")]
    Empty,
    /// Unknown tag byte.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
}

impl Frame {
    /// Splits a frame body (after the length prefix) into tag and payload.
    pub fn decode(mut body: BytesMut) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Empty);
        }
        let tag = body.split_to(1);
        let payload = body.freeze();
        match tag.first().copied() {
            Some(TAG_JSON) => Ok(Frame::Json(payload)),
            Some(TAG_STDOUT) => Ok(Frame::Stdout(payload)),
            Some(TAG_STDERR) => Ok(Frame::Stderr(payload)),
            Some(t) => Err(FrameError::UnknownTag(t)),
            None => Err(FrameError::Empty),
        }
    }

    /// Encodes a tagged body (without the length prefix).
    pub fn encode(tag: u8, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(payload.len() + 1);
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(payload);
        b.freeze()
    }

    /// Encodes a JSON value as a frame body.
    pub fn json<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
        let v = serde_json::to_vec(value)?;
        Ok(Frame::encode(TAG_JSON, &v))
    }
}

/// Errors of the length-delimited codec: the peer is at fault (or the connection broke).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A length prefix announced more than [`MAX_FRAME`] bytes: the connection is closed,
    /// nothing of that size is allocated.
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    /// Reading or writing the connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The codec both ends use: each frame is a 4-byte big-endian length `N` (at most
/// [`MAX_FRAME`]), then `N` bytes of body (a tag byte and its payload, see [`Frame`]).
///
/// Sans-IO: [`FrameCodec::decode`] and [`FrameCodec::encode`] work on byte buffers. With the
/// `tokio-util` feature it is also a `tokio_util::codec::{Decoder, Encoder}` for `Framed`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// Length of a frame's length prefix, in bytes.
const PREFIX: usize = 4;

impl FrameCodec {
    /// Takes the next whole frame body off the front of `buf`; `Ok(None)` until one is there
    /// (it reserves room for the announced body, never more than [`MAX_FRAME`]).
    ///
    /// Errors: [`CodecError::TooLong`] when the length prefix is over [`MAX_FRAME`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let Some(prefix) = buf.get(..PREFIX) else {
            return Ok(None);
        };
        let mut len = [0u8; PREFIX];
        len.copy_from_slice(prefix);
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(CodecError::TooLong(n));
        }
        if buf.len() < PREFIX + n {
            buf.reserve(PREFIX + n - buf.len());
            return Ok(None);
        }
        buf.advance(PREFIX);
        Ok(Some(buf.split_to(n)))
    }

    /// Appends one frame (length prefix and `body`) to `dst`.
    ///
    /// Errors: [`CodecError::TooLong`] when `body` is over [`MAX_FRAME`].
    pub fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        if body.len() > MAX_FRAME {
            return Err(CodecError::TooLong(body.len()));
        }
        dst.reserve(PREFIX + body.len());
        dst.put_u32(body.len() as u32);
        dst.put_slice(body);
        Ok(())
    }
}

#[cfg(feature = "tokio-util")]
impl tokio_util::codec::Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        FrameCodec::decode(self, src)
    }
}

#[cfg(feature = "tokio-util")]
impl tokio_util::codec::Encoder<Bytes> for FrameCodec {
    type Error = CodecError;
    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        FrameCodec::encode(self, &body, dst)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn frame_round_trip_and_bad_tags() {
        let body = Frame::encode(TAG_STDERR, b"abc");
        match Frame::decode(BytesMut::from(&body[..])).unwrap() {
            Frame::Stderr(p) => assert_eq!(&p[..], b"abc"),
            other => panic!("wrong frame {other:?}"),
        }
        assert!(matches!(
            Frame::decode(BytesMut::new()),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            Frame::decode(BytesMut::from(&[9u8, 1][..])),
            Err(FrameError::UnknownTag(9))
        ));
    }

    #[test]
    fn codec_round_trip_partial_input_and_oversized_prefix() {
        let mut c = FrameCodec;
        let mut wire = BytesMut::new();
        c.encode(b"\x00{}", &mut wire).unwrap();
        c.encode(b"", &mut wire).unwrap();
        assert_eq!(&wire[..4], &[0, 0, 0, 3]);
        // One byte at a time: no frame until the whole body is there.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"\x00{}".to_vec(), Vec::new()]);
        assert!(buf.is_empty());
        // A prefix over the limit is an error before any body arrives.
        let mut big = BytesMut::from(&((MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        assert!(matches!(c.decode(&mut big), Err(CodecError::TooLong(_))));
        assert!(big.capacity() < MAX_FRAME);
        let mut exact = BytesMut::from(&(MAX_FRAME as u32).to_be_bytes()[..]);
        assert!(c.decode(&mut exact).unwrap().is_none());
    }
}
