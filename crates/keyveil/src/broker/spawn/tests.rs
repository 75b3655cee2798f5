#![allow(clippy::unwrap_used)]
use super::child::*;
use super::conn::*;
use super::relay::*;
use crate::redact::Redactor;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// A client connection that is full (the client reads nothing).
fn full_sink() -> (
    crate::frame_writer::FrameWriter<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
) {
    let (a, b) = tokio::io::duplex(8);
    (crate::frame_writer::FrameWriter::new(a), b)
}

fn reply() -> bytes::Bytes {
    keyveil_proto::Frame::json(&serde_json::json!({"exit": 0})).unwrap()
}

#[tokio::test]
async fn a_bounded_final_reply_gives_up_on_a_client_that_does_not_read() {
    let bound = Duration::from_millis(200);
    let (mut sink, _client) = full_sink();
    let t0 = Instant::now();
    assert!(!send_final(&mut sink, reply(), Some(bound)).await);
    assert!(t0.elapsed() >= bound && t0.elapsed() < Duration::from_secs(5));
    // The cut frame is never followed by anything.
    let next = sink.write_frame(keyveil_proto::TAG_STDOUT, b"x").await;
    assert!(next.is_err());
    // Unbounded, the reply waits for its client (back pressure, as for output).
    let (mut sink, _client) = full_sink();
    let waited = tokio::time::timeout(bound * 3, send_final(&mut sink, reply(), None)).await;
    assert!(waited.is_err(), "an unbounded reply was given up on");
}

#[tokio::test]
async fn a_revocation_counts_only_what_the_reapers_confirmed() {
    use crate::broker::state::RunsStopped;
    let confirmed = tokio::sync::watch::channel(None);
    let left_some = tokio::sync::watch::channel(None);
    let killed_reaper = tokio::sync::watch::channel(None);
    let rx = vec![
        confirmed.0.subscribe(),
        left_some.0.subscribe(),
        killed_reaper.0.subscribe(),
    ];
    let waiting = tokio::spawn(RunsStopped::wait(rx));
    // The ends come after the wait started, from the relays.
    let report = |l: &str| crate::reap::Report::parse(l);
    confirmed
        .0
        .send(Some(tree_end(report("signal=15 killed=52 left=0\n"))))
        .unwrap();
    left_some
        .0
        .send(Some(tree_end(report("exit=0 killed=3 left=1\n"))))
        .unwrap();
    // A reaper killed by the agent wrote nothing.
    killed_reaper.0.send(Some(tree_end(report("")))).unwrap();
    let got = waiting.await.unwrap();
    assert_eq!(
        got,
        RunsStopped {
            runs: 3,
            killed: 55,
            unconfirmed: 2
        }
    );
    assert_eq!(got.reply().processes_killed, 55);
    assert_eq!(RunsStopped::wait(Vec::new()).await, RunsStopped::default());
}

#[tokio::test]
async fn oversized_output_buffers_are_not_reused() {
    let (mut w, r) = tokio::net::UnixStream::pair().unwrap();
    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let (back_tx, back_rx) = mpsc::channel(IN_FLIGHT + 1);
    // One buffer grown by marker expansion, then one of the usual size.
    back_tx
        .try_send(Vec::with_capacity(RECYCLE_MAX + 1))
        .unwrap();
    back_tx.try_send(Vec::with_capacity(READ_CHUNK)).unwrap();
    let pump = tokio::spawn(pump(
        Box::new(r),
        StreamKind::Stdout,
        Redactor::new([("N", b"planted-value".to_vec())]),
        tx,
        back_rx,
        None,
    ));
    w.write_all(b"hello planted-value\n").await.unwrap();
    drop(w);
    let mut seen = Vec::new();
    while let Some(c) = rx.recv().await {
        assert!(recyclable(&c.bytes), "capacity {}", c.bytes.capacity());
        seen.extend_from_slice(&c.bytes);
    }
    pump.await.unwrap();
    assert_eq!(seen, b"hello [REDACTED:N]\n");
    assert!(!recyclable(&Vec::with_capacity(RECYCLE_MAX + 1)));
    assert!(recyclable(&Vec::with_capacity(READ_CHUNK + 1024)));
}
