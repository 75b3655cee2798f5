//! Fuzz target for the broker's socket input: the length-delimited codec, the frame decoder
//! (`keyveil_proto::Frame::decode`) and JSON `Request` / `Reply` parsing.
//!
//! It builds `keyveil-proto` alone (serde, bytes, zeroize and thiserror; no tokio). Properties:
//! 1. a byte stream cut into frames by the codec never panics; an oversized length prefix is an
//!    error (the broker closes the connection), never an allocation of that size;
//! 2. a frame decodes to exactly one of JSON / stdout / stderr or a clear error (empty frame,
//!    unknown tag), and `encode(tag, payload)` gives the frame back;
//! 3. a JSON payload that parses as a `Request` (or `Reply`) re-serialises to a document that
//!    parses again to the same document (serialise → parse → serialise is stable);
//! 4. a parsed request's `Debug` never shows a passphrase or value: replacing every secret
//!    field leaves the `Debug` output unchanged.
//!
//! Run: `cargo +nightly fuzz run frame_decoder -- -max_total_time=30`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

use keyveil_proto::{Frame, FrameCodec, FrameError, MAX_FRAME, Reply, Request};

/// Field names whose values are secrets (`Passphrase` in `keyveil-proto`).
const SECRET_FIELDS: [&str; 3] = ["passphrase", "value", "admin"];

fuzz_target!(|data: &[u8]| {
    // The codec the broker and its clients use.
    let mut codec = FrameCodec;
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= MAX_FRAME);
                check_frame(frame);
                frames += 1;
            }
            Ok(None) => break,
            Err(_) => {
                // Only an announced length over MAX_FRAME is an error.
                assert!(frames < usize::MAX);
                break;
            }
        }
    }
    // The whole input as one frame body, too.
    check_frame(BytesMut::from(data));
});

fn check_frame(body: BytesMut) {
    let copy = body.clone().freeze();
    match Frame::decode(body) {
        Err(FrameError::Empty) => assert!(copy.is_empty()),
        Err(FrameError::UnknownTag(t)) => {
            assert!(t > 2);
            assert_eq!(copy.first(), Some(&t));
        }
        Ok(frame) => {
            let (tag, payload) = match &frame {
                Frame::Json(p) => (keyveil_proto::TAG_JSON, p),
                Frame::Stdout(p) => (keyveil_proto::TAG_STDOUT, p),
                Frame::Stderr(p) => (keyveil_proto::TAG_STDERR, p),
            };
            assert_eq!(
                Frame::encode(tag, payload),
                copy,
                "encode(decode(frame)) != frame"
            );
            if let Frame::Json(p) = frame {
                check_json(&p);
            }
        }
    }
}

fn check_json(payload: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<Request>(payload) {
        let _ = req.op();
        let once = serde_json::to_value(&req).expect("a parsed request serialises");
        let again: Request =
            serde_json::from_value(once.clone()).expect("a request's own serialisation parses");
        assert_eq!(
            serde_json::to_value(&again).expect("serialises"),
            once,
            "request round trip"
        );
        // Debug shows no secret: replacing every secret leaves it unchanged.
        let mut masked = once.clone();
        mask(&mut masked);
        let masked: Request = serde_json::from_value(masked).expect("a masked request parses");
        assert_eq!(
            format!("{req:?}"),
            format!("{masked:?}"),
            "Debug of a request depends on a secret field"
        );
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(payload) {
        let _ = reply.is_final();
        let once = serde_json::to_value(&reply).expect("a parsed reply serialises");
        let again: Reply =
            serde_json::from_value(once.clone()).expect("a reply's own serialisation parses");
        assert_eq!(
            serde_json::to_value(&again).expect("serialises"),
            once,
            "reply round trip"
        );
    }
}

/// Replaces every string under a secret field name with a different string of the same length.
fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if SECRET_FIELDS.contains(&k.as_str())
                    && let Value::String(s) = val
                {
                    *s = s
                        .chars()
                        .map(|c| if c == 'x' { 'y' } else { 'x' })
                        .collect();
                } else {
                    mask(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}
