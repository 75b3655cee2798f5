//! At most a few Argon2id derivations at once, always on the same few threads.
//!
//! Every passphrase the broker judges (`unlock`, `init`, a passphrase typed into the approval
//! page) costs one Argon2id derivation of the vault's memory cost (64 MiB by default,
//! `docs/vault-format.md`). Anyone who can reach the socket or the page can ask for many at once.
//! Run on tokio's blocking pool, 100 parallel wrong guesses would hold 6.4 GiB at once, and even
//! taken in turns each new blocking thread gets its own malloc arena, which keeps the freed
//! derivation memory: the broker grew by 240 MiB after 24 guesses at 19 MiB each.
//!
//! So derivations run on [`threads`] dedicated threads, fed in arrival order from one queue:
//! at most that many run together, and the memory they keep between guesses is bounded by
//! `threads × memory cost`. Nothing is refused: the human's passphrase is always judged, only
//! perhaps after the guesses queued before it, which costs no more time than running them all
//! at once on the same cores would.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

/// A derivation that did not finish: it panicked, or its thread could not be started.
#[derive(Debug, thiserror::Error)]
#[error("the key derivation did not finish (it failed inside the broker)")]
pub(crate) struct Unfinished;

type Job = Box<dyn FnOnce() + Send>;

/// How many derivation threads there are: the number of cores, between 1 and 4.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

fn queue() -> Option<&'static Mutex<Sender<Job>>> {
    static QUEUE: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for n in 0..threads() {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("keyveil-kdf-{n}"))
                    .spawn(move || work(&rx));
                started += usize::from(spawned.is_ok());
            }
            (started > 0).then(|| Mutex::new(tx))
        })
        .as_ref()
}

/// One derivation thread: takes the next job in arrival order until the queue is gone.
fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Runs `derive` (a blocking Argon2id derivation) on one of the derivation threads once one is
/// free, and returns its result.
///
/// # Errors
/// [`Unfinished`] when `derive` panicked or no derivation thread could be started.
pub(crate) async fn derive<T, F>(derive: F) -> Result<T, Unfinished>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(derive)));
    });
    let sent = match queue() {
        Some(q) => match q.lock() {
            Ok(q) => q.send(job).is_ok(),
            Err(poisoned) => poisoned.into_inner().send(job).is_ok(),
        },
        None => false,
    };
    if !sent {
        return Err(Unfinished);
    }
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        _ => Err(Unfinished),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_limit_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (running, peak) = (running.clone(), peak.clone());
                tokio::spawn(super::derive(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak >= 1 && peak <= super::threads(), "peak {peak}");
    }

    #[tokio::test]
    async fn a_panicking_derivation_is_unfinished_and_the_threads_go_on() {
        for _ in 0..super::threads() + 1 {
            let r: Result<(), _> = super::derive(|| panic!("derivation failed")).await;
            assert!(r.is_err());
        }
        assert_eq!(super::derive(|| 7).await.unwrap(), 7);
    }
}
