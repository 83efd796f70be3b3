//! The store's one writer: accepts messages from the publisher (and acknowledgements and QoS 2
//! stages from the link) and commits them in groups.
//!
//! Commit timing: the first job after a quiet spell is committed at once, so at low rates a crash
//! loses (almost) nothing; while jobs keep coming, commits are spaced at least `commit_interval`
//! apart and each takes everything that arrived meanwhile, which bounds the fsyncs an SD card sees.
//! So a SIGKILL or power cut loses at most what arrived in the last `commit_interval` (plus the
//! commit in progress), and nothing at all that was committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::settings::UpstreamSettings;
use crate::store::{now_ms, Record, Store};
use crate::topic_map::OutMessage;
use crate::upstream::outbox::StageChange;
use crate::upstream::MAX_PACKET;

/// Messages waiting for the next group commit; the publisher waits when it is full, which pushes back
/// onto the serial readers (they stop reading; the kernel's tty buffer holds the bytes).
const ACCEPT_CAPACITY: usize = 4096;

/// Most jobs in one commit; bounds the memory of one batch and the length of one transaction.
const MAX_BATCH: usize = 4096;

/// Longest an acknowledged message waits to be deleted when no new reading comes to share the commit.
const ACK_DEFER: Duration = Duration::from_secs(1);

/// One unit of work for the group commit.
enum Job {
    Accept {
        queued: Option<Record>,
        retained: Option<Record>,
    },
    /// From the link: acknowledged ids to delete and QoS 2 stages to record. `done` is told once
    /// that commit is on disk.
    Progress {
        acked: Vec<i64>,
        refused: Vec<i64>,
        stages: Vec<StageChange>,
        done: Option<oneshot::Sender<()>>,
    },
}

impl Job {
    /// Whether the job should be on disk soon: readings and stages (a stage matters only if it is
    /// committed before a crash), and anything someone waits for. Plain deletes can wait.
    fn urgent(&self) -> bool {
        match self {
            Job::Accept { .. } => true,
            Job::Progress { stages, done, .. } => !stages.is_empty() || done.is_some(),
        }
    }
}

/// The accepting side: where the publisher hands messages over (and the link its progress).
#[derive(Clone)]
pub struct Acceptor {
    tx: mpsc::Sender<Job>,
    upstream: Option<Arc<UpstreamSettings>>,
}

impl Acceptor {
    /// Hands a local message over: queued for upstream if a forward rule takes it, and kept as the
    /// topic's last retained value if `keep_retained` and it is retained.
    pub async fn submit(&self, msg: &OutMessage, keep_retained: bool) {
        let accepted_ms = now_ms();
        let queued = self.upstream.as_ref().and_then(|u| u.route(&msg.topic, msg.retain)).and_then(|(t, q, r)| {
            if t.len() + msg.payload.len() + 16 > MAX_PACKET {
                tracing::warn!(topic = %msg.topic, bytes = msg.payload.len(), "message too large for upstream; not queued");
                return None;
            }
            Some(Record { topic: t, payload: msg.payload.clone(), qos: q, retain: r, accepted_ms })
        });
        let retained = (keep_retained && msg.retain).then(|| Record {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: true,
            accepted_ms,
        });
        if queued.is_none() && retained.is_none() {
            return;
        }
        if self.tx.send(Job::Accept { queued, retained }).await.is_err() {
            tracing::error!(topic = %msg.topic, "store writer has stopped; message not accepted");
        }
    }

    /// Queues acknowledged ids for deletion and stages for recording in the next commit; with
    /// `wait`, returns once that commit is done.
    pub(crate) async fn progress(&self, acked: Vec<i64>, refused: Vec<i64>, stages: Vec<StageChange>, wait: bool) {
        if acked.is_empty() && refused.is_empty() && stages.is_empty() && !wait {
            return;
        }
        let (done, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if self.tx.send(Job::Progress { acked, refused, stages, done }).await.is_ok() {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
        }
    }
}

/// Starts the group-commit writer. `committed` is notified after every commit.
pub fn start_writer(
    store: Arc<Store>,
    upstream: Option<Arc<UpstreamSettings>>,
    commit_interval: Duration,
    committed: Arc<Notify>,
    panics: &crate::tasks::Panics,
) -> (Acceptor, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(ACCEPT_CAPACITY);
    let max_age = upstream.as_ref().map(|u| u.queue.max_age);
    let task = panics.spawn("the queue writer", write_loop(store, rx, commit_interval, committed, max_age));
    (Acceptor { tx, upstream }, task)
}

/// How often an idle writer looks for messages past `max_age`: a quarter of it, so they go at most
/// 25% late, but at least every second (a tiny `max_age` must not spin) and at most every minute
/// (a look is a snapshot read; a commit happens only when something expired).
fn expiry_check(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

async fn write_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Job>,
    every: Duration,
    committed: Arc<Notify>,
    max_age: Option<Duration>,
) {
    let mut open = true;
    let mut failing = Failing::default();
    // When the last commit began: the next one starts no earlier than `every` after it.
    let mut last_commit = Instant::now() - every;
    // `max_age` holds with no new readings too (a commit applies it): checked at start, since the
    // first tick is immediate, and then while idle.
    let mut expiry = tokio::time::interval(max_age.map_or(Duration::from_secs(60), expiry_check));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open {
        let first = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => break,
            },
            _ = expiry.tick(), if max_age.is_some() => {
                let overdue = max_age.is_some_and(|m| store.status().oldest_age_s.is_some_and(|a| a > m.as_secs_f64()));
                if overdue {
                    commit(&store, Vec::new(), &mut failing).await;
                    committed.notify_one();
                }
                continue;
            }
        };
        let now = Instant::now();
        let spaced = last_commit + every;
        let mut deadline = if first.urgent() { spaced.max(now) } else { now + ACK_DEFER.max(every) };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            // What is already waiting joins this commit at no cost; beyond that, wait only until
            // the deadline.
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() >= deadline => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            let Some(j) = next else {
                open = false;
                break;
            };
            if j.urgent() {
                deadline = deadline.min(spaced.max(Instant::now()));
            }
            batch.push(j);
        }
        last_commit = Instant::now();
        if let Some(carry) = failing.carried.take() {
            batch.push(carry);
        }
        commit(&store, batch, &mut failing).await;
        committed.notify_one();
    }
}

/// While appends fail (a full or failing filesystem): acknowledgements and stages are kept for the
/// next attempt (deleting or marking rows is never given up), readings are counted as not queued,
/// and the failure is logged once per episode, with a summary when writes work again.
#[derive(Default)]
struct Failing {
    carried: Option<Job>,
    /// Messages not queued since the episode began; None while writes work.
    since: Option<u64>,
    warnings: QueueWarnings,
}

/// A full queue or expiring messages happen at every commit while the condition lasts (up to 10 a
/// second): say so at most this often, with the totals, so the journal and the SD card are spared.
const QUEUE_WARN_EVERY: Duration = Duration::from_secs(10);

struct QueueWarnings {
    dropped: crate::logging::Every,
    rejected: crate::logging::Every,
    expired: crate::logging::Every,
}

impl Default for QueueWarnings {
    fn default() -> QueueWarnings {
        let every = || crate::logging::Every::new(QUEUE_WARN_EVERY);
        QueueWarnings { dropped: every(), rejected: every(), expired: every() }
    }
}

async fn commit(store: &Arc<Store>, batch: Vec<Job>, failing: &mut Failing) {
    let mut queued = Vec::with_capacity(batch.len());
    let mut retained: Vec<Record> = Vec::new();
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut stages = Vec::new();
    let mut waiting = Vec::new();
    for j in batch {
        match j {
            Job::Accept { queued: q, retained: r } => {
                queued.extend(q);
                if let Some(r) = r {
                    // Only the newest value per topic matters within one commit.
                    retained.retain(|o| o.topic != r.topic);
                    retained.push(r);
                }
            }
            Job::Progress { acked: a, refused: r, stages: s, done } => {
                acked.extend(a);
                refused.extend(r);
                stages.extend(s);
                waiting.extend(done);
            }
        }
    }
    let s = store.clone();
    let n = queued.len() as u64;
    let (a, rf, st) = (acked.clone(), refused.clone(), stages.clone());
    let result = tokio::task::spawn_blocking(move || {
        let first = s.append(&queued, &retained, &acked, &refused, &stages);
        match first {
            // The WAL keeps its largest size: give that space back and try once more.
            Err(e) if e.disk_full() && s.shrink_wal().is_ok() => {
                s.append(&queued, &retained, &acked, &refused, &stages)
            }
            other => other,
        }
    })
    .await;
    for w in waiting {
        let _ = w.send(());
    }
    match result {
        Ok(Ok(out)) => {
            // Recovered once messages are written again (an empty commit proves nothing).
            if let Some(lost) = failing.since.take_if(|_| n > 0) {
                tracing::warn!(
                    not_queued = lost,
                    "queue writes work again; {lost} messages could not be queued meanwhile"
                );
            }
            let w = &mut failing.warnings;
            if out.dropped_oldest > 0 {
                w.dropped
                    .note(out.dropped_oldest, |n| tracing::warn!(dropped = n, "queue full: oldest messages dropped"));
            }
            if out.rejected > 0 {
                w.rejected.note(out.rejected, |n| tracing::warn!(rejected = n, "queue full: new messages rejected"));
            }
            if out.expired > 0 {
                w.expired
                    .note(out.expired, |n| tracing::warn!(expired = n, "queued messages older than max_age dropped"));
            }
        }
        Ok(Err(e)) => {
            store.count_not_queued(n);
            if !a.is_empty() || !rf.is_empty() || !st.is_empty() {
                failing.carried = Some(Job::Progress { acked: a, refused: rf, stages: st, done: None });
            }
            match &mut failing.since {
                Some(lost) => *lost += n,
                None => {
                    failing.since = Some(n);
                    tracing::error!(error = %e, messages = n,
                        "cannot write to the upstream queue: {e}; messages are still published locally but not \
                         queued for upstream (counted as not_queued) until writes work again");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, messages = n, "queue writer panicked; messages lost"),
    }
}
