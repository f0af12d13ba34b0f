//! A background batch producer: the next batches are prepared (decoded, augmented) on
//! another thread while the current step runs, so the input pipeline does not stall the
//! training loop. Batches arrive in production order, so a seeded producer gives the same
//! sequence as running it inline.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Runs `produce` on a worker thread, keeping up to `depth` results ready.
pub struct Prefetcher<T> {
    receiver: Option<Receiver<T>>,
    worker: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Starts the worker; it stops when the prefetcher is dropped.
    pub fn new(depth: usize, mut produce: impl FnMut() -> T + Send + 'static) -> Self {
        let (sender, receiver): (SyncSender<T>, Receiver<T>) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("densessl-loader".into())
            .spawn(move || {
                // `send` fails once the receiver is gone: that is the stop signal.
                while sender.send(produce()).is_ok() {}
            })
            .expect("spawn loader thread");
        Self { receiver: Some(receiver), worker: Some(worker) }
    }

    /// The next item, waiting for the worker if it is not ready yet.
    pub fn next(&self) -> T {
        self.receiver.as_ref().expect("live prefetcher").recv().expect("loader thread panicked")
    }
}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_and_stops_on_drop() {
        let mut n = 0u64;
        let prefetcher = Prefetcher::new(3, move || {
            n += 1;
            n * n
        });
        let got: Vec<u64> = (0..10).map(|_| prefetcher.next()).collect();
        assert_eq!(got, (1..=10).map(|n| n * n).collect::<Vec<_>>());
        drop(prefetcher); // joins the worker; a hang here would fail the test by timeout
    }
}
