//! Group commit: many concurrent writers, one transaction and one fsync per batch.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use crate::{Store, StoreError, Write};

/// Pending requests the committer holds at most; a full queue makes writers wait
/// (back-pressure) instead of growing memory without bound.
const QUEUE_REQUESTS_MAX: usize = 4096;
/// Writes folded into one transaction at most, to bound the latency of a batch.
const BATCH_WRITES_MAX: usize = 1024;

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Request {
    writes: Vec<Write>,
    done: Done,
}

/// Runs [`Store::apply`] on a dedicated thread, folding every request that is
/// waiting when a transaction starts into that transaction. Each request's `done`
/// callback runs only after the transaction holding it has been fsynced.
#[derive(Clone)]
pub struct GroupCommitter {
    sender: SyncSender<Request>,
}

impl GroupCommitter {
    pub fn start(store: Arc<Store>) -> GroupCommitter {
        let (sender, receiver) = sync_channel(QUEUE_REQUESTS_MAX);
        std::thread::Builder::new()
            .name("store-commit".to_owned())
            .spawn(move || run(&store, &receiver))
            .expect("spawning the commit thread");
        GroupCommitter { sender }
    }

    /// Queues `writes`; `done` is called with the outcome once it is durable (or
    /// failed). Blocks while the queue is full.
    pub fn submit(
        &self,
        writes: Vec<Write>,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        let request = Request {
            writes,
            done: Box::new(done),
        };
        match self.sender.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => {
                if let Err(error) = self.sender.send(request) {
                    (error.0.done)(Err("store is shut down".to_owned()));
                }
            }
            Err(TrySendError::Disconnected(request)) => {
                (request.done)(Err("store is shut down".to_owned()))
            }
        }
    }
}

fn run(store: &Store, receiver: &Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        let mut n_writes = batch[0].writes.len();
        while n_writes < BATCH_WRITES_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            n_writes += next.writes.len();
            batch.push(next);
        }
        let writes: Vec<Write> = batch
            .iter()
            .flat_map(|request| request.writes.iter().cloned())
            .collect();
        let started = std::time::Instant::now();
        let outcome = store
            .apply(&writes)
            .map_err(|error: StoreError| error.to_string());
        cm_types::metrics::STORE_COMMIT_SECONDS.observe_duration(started.elapsed());
        cm_types::metrics::STORE_COMMIT_BATCH_WRITES.observe(writes.len() as u64);
        cm_types::metrics::STORE_COMMITS.increment();
        cm_types::metrics::STORE_WRITES.add(writes.len() as u64);
        if outcome.is_err() && batch.len() > 1 {
            // One request's refusal (a folder over its size limit) must not fail
            // the others folded into its transaction: each is tried on its own.
            for request in batch {
                let started = std::time::Instant::now();
                let outcome = store
                    .apply(&request.writes)
                    .map_err(|error: StoreError| error.to_string());
                cm_types::metrics::STORE_COMMIT_SECONDS.observe_duration(started.elapsed());
                cm_types::metrics::STORE_COMMIT_BATCH_WRITES.observe(request.writes.len() as u64);
                cm_types::metrics::STORE_COMMITS.increment();
                (request.done)(outcome);
            }
            continue;
        }
        if let Err(error) = &outcome {
            tracing::error!(%error, n_writes, "store commit failed");
        }
        for request in batch {
            (request.done)(outcome.clone());
        }
    }
}
