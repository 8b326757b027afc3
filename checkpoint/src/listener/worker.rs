//! One worker task per assigned partition: takes its queued messages through an engine session
//! in order and settles them (offset stored only after the row is durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt as _;
use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::flow::{Flow, Queued, Ticket};
use super::{CHECK_AHEAD, RESUME_AT, REVOKE_CHECK, Shared, TURN_BATCHES};
use crate::crash::{self, CrashPoint};
use crate::engine::{Disposition, EngineError, Progress, Session, WaitCause};
use crate::handler::BoxFuture;
use crate::message::Message;

/// One partition's worker.
pub(super) struct PartitionWorker {
    pub(super) queue: mpsc::UnboundedSender<Queued>,
    pub(super) flow: Arc<Flow>,
    pub(super) revoked: Arc<AtomicBool>,
    pub(super) task: JoinHandle<()>,
    /// True once the task has ended, however it ended.
    pub(super) ended: watch::Receiver<bool>,
}

/// Tells whoever waits that a worker's task has ended (dropped with the task's future).
pub(super) struct Ended(pub(super) watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A worker for `partition`. When the partition was ours before (revoked, then assigned
/// again), `previous` is the worker it had: the new one starts only once that one has ended,
/// so two workers never handle one partition at once and no user code is cancelled.
pub(super) fn spawn_worker(
    shared: &Arc<Shared>,
    partition: i32,
    previous: Option<PartitionWorker>,
) -> PartitionWorker {
    let (queue, inbox) = mpsc::unbounded_channel::<Queued>();
    let flow = Arc::new(Flow::default());
    let revoked = shared.assignment.flag(partition);
    let (ended_tx, ended) = watch::channel(false);
    let previous = previous.map(|worker| worker.ended.clone());
    let task = {
        let (shared, flow, revoked) = (Arc::clone(shared), Arc::clone(&flow), Arc::clone(&revoked));
        tokio::spawn(async move {
            let _ended = Ended(ended_tx);
            if let Some(mut previous) = previous {
                let _ = previous.wait_for(|ended| *ended).await;
            }
            // Handler panics are caught by the engine; one here is checkpoint's own, and
            // still must not pass unnoticed.
            let worked =
                std::panic::AssertUnwindSafe(work(&shared, partition, inbox, &flow, &revoked))
                    .catch_unwind()
                    .await;
            let error = match worked {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_) => EngineError::Store(crate::store::StoreError::Unavailable {
                    backend: shared.engine.store().backend(),
                    message: format!("partition {partition}'s worker panicked"),
                }),
            };
            *flow.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        })
    };
    PartitionWorker {
        queue,
        flow,
        revoked,
        task,
        ended,
    }
}

/// A partition's worker: takes runs (or batches) of queued messages through its session until
/// the partition is revoked, the listener stops, or a message cannot be settled.
pub(super) async fn work(
    shared: &Shared,
    partition: i32,
    mut inbox: mpsc::UnboundedReceiver<Queued>,
    flow: &Flow,
    revoked: &AtomicBool,
) -> Result<(), EngineError> {
    let mut session = Session::new(
        shared.engine.clone(),
        Arc::clone(&shared.spec.handler),
        shared.origin.clone(),
        shared.spec.policy(),
    );
    let progress = WorkerProgress {
        shared,
        flow,
        revoked,
    };
    // Held from taking ownership until letting the partition go: a revocation waits for it.
    let held = shared.assignment.busy(partition);
    match session
        .begin(&shared.spec.topic, partition, &progress)
        .await
    {
        Ok(()) => {}
        Err(EngineError::Interrupted) => return Ok(()),
        Err(error) => return Err(error),
    }
    let mut stopping = shared.stopping.clone();
    let gone = || revoked.load(Ordering::SeqCst) || shared.stopping();
    loop {
        let revocation = shared.assignment.revocation.notified();
        tokio::pin!(revocation);
        // Registered before the check, so a revocation between the two is not missed.
        revocation.as_mut().enable();
        if gone() {
            break;
        }
        let first = tokio::select! {
        received = inbox.recv() => match received {
            Some(queued) => queued,
            None => break},
        _ = stopping.wait_for(|stop| *stop) => break,
        () = &mut revocation => continue};
        // Wait for a turn first, so the run below takes everything queued meanwhile.
        let permit = tokio::select! {
        permit = shared.permits.acquire() => permit,
        // Not processed: it goes to the next owner.
        () = &mut revocation => continue};
        let Ok(_permit) = permit else {
            break;
        };
        // Take what is already queued: up to batch_size messages for a batch, or up to
        // CHECK_AHEAD messages whose duplicate check is done in one query.
        let window = if shared.spec.batch_size > 1 {
            shared.spec.batch_size
        } else {
            CHECK_AHEAD
        };
        let run = take_queued(shared, partition, &mut inbox, flow, Some(first), window);
        if gone() {
            // Not ours any more, or shutting down: leave it to the next owner.
            break;
        }
        let done = if shared.spec.batch_size > 1 {
            settle_batches(shared, partition, &mut inbox, run, &mut session, &progress).await?
        } else {
            settle_run(shared, run, &mut session, &progress).await?
        };
        if !done {
            break;
        }
    }
    // Nothing of this partition is inside `consume` any more: let it go cleanly. (A worker
    // that ends with an error keeps its ownership row, so the next owner counts the message
    // it stopped at.)
    let left = match session.end(&progress).await {
        Ok(()) | Err(EngineError::Interrupted) => Ok(()),
        Err(error) => Err(error),
    };
    drop(held);
    left
}

/// Messages taken from a partition's queue, with their bytes still held against the budget.
pub(super) struct Run {
    pub(super) messages: Vec<Message>,
    pub(super) _ticket: Option<Ticket>,
}

/// Takes `first` (already received from `inbox`) and what else is queued for `partition`, up
/// to `window` messages, and resumes the partition once few enough are left queued.
pub(super) fn take_queued(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Queued>,
    flow: &Flow,
    first: Option<Queued>,
    window: usize,
) -> Run {
    let mut messages = Vec::new();
    let mut ticket: Option<Ticket> = None;
    let mut next = first.or_else(|| inbox.try_recv().ok());
    while let Some(queued) = next.take() {
        messages.push(queued.message);
        match &mut ticket {
            Some(held) => held.merge(queued.ticket),
            None => ticket = Some(queued.ticket),
        }
        if messages.len() < window {
            next = inbox.try_recv().ok();
        }
    }
    let taken = messages.len();
    let left = flow.depth.fetch_sub(taken, Ordering::SeqCst) - taken;
    flow.changed.notify_one();
    if left <= RESUME_AT
        && shared.budget.low(flow)
        && let Some(consumer) = shared.consumer.upgrade()
    {
        flow.set_paused(&consumer, &shared.spec.topic, partition, false);
    }
    Run {
        messages,
        _ticket: ticket,
    }
}

/// What the engine's loop tells a partition's worker, and how it waits: backoffs mark the
/// partition as backing off (the receive loop pauses it) and end on shutdown; a handler retry
/// also ends on revoke (the next owner redelivers the message), a database wait does not (the
/// message may have been consumed already).
pub(super) struct WorkerProgress<'a> {
    pub(super) shared: &'a Shared,
    pub(super) flow: &'a Flow,
    pub(super) revoked: &'a AtomicBool,
}

impl Progress for WorkerProgress<'_> {
    fn wait(&self, delay: Duration, cause: WaitCause) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let retry = matches!(cause, WaitCause::Retry { .. });
            if retry {
                self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.shared.labels.retried();
            }
            let gone = || retry && self.revoked.load(Ordering::SeqCst);
            if gone() {
                return false;
            }
            let mut stopping = self.shared.stopping.clone();
            self.flow.backing_off.store(true, Ordering::SeqCst);
            self.flow.changed.notify_one();
            let until = tokio::time::Instant::now() + delay;
            let mut slept = true;
            // In slices, so a revocation (which waits for this worker) is noticed soon.
            while slept && !gone() && tokio::time::Instant::now() < until {
                let slice = until.min(tokio::time::Instant::now() + REVOKE_CHECK);
                slept = tokio::select! {
                () = tokio::time::sleep_until(slice) => true,
                _ = stopping.wait_for(|stop| *stop) => false};
            }
            self.flow.backing_off.store(false, Ordering::SeqCst);
            slept && !gone()
        })
    }

    /// Marks `message` settled: its offset may be committed. Storing fails only when the
    /// partition was revoked meanwhile; the next owner then redelivers it and the checkpoint
    /// dedups it.
    fn settled(&self, message: &Message, disposition: &Disposition) {
        self.shared.stats.count(disposition);
        self.flow
            .last_settled_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        if matches!(disposition, Disposition::Failed { .. }) {
            self.shared.labels.failed();
        }
        // Only where this attempt committed a row: a redelivered duplicate commits nothing.
        if matches!(
            disposition,
            Disposition::Acknowledged { .. } | Disposition::Failed { .. }
        ) {
            crash::reach(CrashPoint::AfterCommit);
        }
        // Gone when the listener was dropped: the message is then redelivered and deduplicated.
        let Some(consumer) = self.shared.consumer.upgrade() else {
            return;
        };
        if let Err(error) = consumer.store_offset(&message.topic, message.partition, message.offset)
        {
            tracing::debug!(target: "checkpoint", partition = message.partition, %error, "offset not stored");
        }
    }
}

/// Per-message mode over a run of queued messages: one duplicate check for the run, then each
/// message consumed, stored and settled on its own, in order. False when abandoned.
pub(super) async fn settle_run(
    shared: &Shared,
    run: Run,
    session: &mut Session,
    progress: &WorkerProgress<'_>,
) -> Result<bool, EngineError> {
    session.check_ahead(&run.messages).await;
    for message in &run.messages {
        if progress.revoked.load(Ordering::SeqCst) || shared.stopping() {
            return Ok(false);
        }
        if session.settle(message, progress).await?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Batch mode: takes `first`, then up to `TURN_BATCHES - 1` further batches queued meanwhile,
/// each until it is settled. The duplicate check of each next batch runs while the one before
/// is processed. False when abandoned (shutdown or revoke).
pub(super) async fn settle_batches(
    shared: &Shared,
    partition: i32,
    inbox: &mut mpsc::UnboundedReceiver<Queued>,
    first: Run,
    session: &mut Session,
    progress: &WorkerProgress<'_>,
) -> Result<bool, EngineError> {
    let mut batch = first;
    for turn in 1..=TURN_BATCHES {
        let next = if turn < TURN_BATCHES {
            take_queued(
                shared,
                partition,
                inbox,
                progress.flow,
                None,
                shared.spec.batch_size,
            )
        } else {
            Run {
                messages: Vec::new(),
                _ticket: None,
            }
        };
        let Run {
            messages,
            _ticket: held,
        } = batch;
        if !session
            .settle_batch(messages, &next.messages, progress)
            .await?
        {
            return Ok(false);
        }
        drop(held);
        if next.messages.is_empty() {
            return Ok(true);
        }
        if progress.revoked.load(Ordering::SeqCst) || shared.stopping() {
            // Taken but not processed: redelivered to the next owner.
            return Ok(false);
        }
        batch = next;
    }
    Ok(true)
}
