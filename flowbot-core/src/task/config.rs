//! A worker pool's settings: its queues, concurrency, leases and liveness lock, checked by
//! [`WorkerConfig::validate`] with each setting named.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

#[allow(unused_imports)] // named in the docs
use super::queue::TaskQueue;
use super::types::{DEFAULT_QUEUE, RetryPolicy};
#[allow(unused_imports)] // named in the docs
use super::worker::WorkerPool;
use crate::error::{Error, Result};

/// A queue a pool claims from, and how many of its tasks may run at once in this pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Most tasks of this queue running at once in this pool (`None`: only the global limit).
    pub limit: Option<usize>,
}

/// Where a [`WorkerPool`](super::WorkerPool) keeps its liveness lock (see [`WorkerConfig::liveness`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Liveness {
    /// In the directory the store names for its database ([`TaskQueue::liveness_dir`](super::TaskQueue::liveness_dir)):
    /// next to a SQLite database file, or under the system's temporary directory for a
    /// PostgreSQL database and schema. None if the store names none.
    #[default]
    Auto,
    /// In this directory (created if missing). Pools share a directory when they use the same
    /// database on the same host.
    Dir(PathBuf),
    /// No liveness lock: the tasks of a pool that ended wait for their leases to expire.
    Off,
}

/// The longest [`WorkerConfig::lease`]: a day.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The most [`WorkerConfig::concurrency`], [`WorkerConfig::prefetch`] and
/// [`QueueConfig::limit`] allow.
pub const MAX_WORKERS: usize = 100_000;

/// Settings of a [`WorkerPool`](super::WorkerPool).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker id recorded as lease owner; unique per process. With a liveness lock the lease
    /// owner is this id followed by `@` and the lock's random name, unique to this run of the
    /// pool ([`TaskContext::worker_id`](super::TaskContext::worker_id) gives it).
    pub id: String,
    /// Most tasks running at once in this pool (the global worker count).
    pub concurrency: usize,
    /// Queues to claim from.
    pub queues: Vec<QueueConfig>,
    /// Lease length; a task whose worker stops heartbeating for this long runs elsewhere (at
    /// most [`MAX_LEASE`]). Default 10 s.
    pub lease: Duration,
    /// How often leases of running tasks are extended (shorter than the lease). Default 3 s.
    pub heartbeat: Duration,
    /// How often an idle pool polls when no wake-up signal arrives.
    pub poll_interval: Duration,
    /// Most tasks claimed in one round trip.
    pub batch_size: u32,
    /// Tasks claimed ahead of free workers (leased and heartbeated while they wait), so one
    /// round trip can fetch a whole batch. Queues with a limit prefetch nothing.
    pub prefetch: usize,
    /// How often expired leases, and pools that ended, are looked for. Default 1 s.
    pub recover_interval: Duration,
    /// The liveness lock: while the pool runs it holds a lock on a file of its own in a
    /// directory shared with the other pools of its database on this host, and looks there
    /// (every `recover_interval`, and at once when it starts) for pools whose lock is free.
    /// The operating system frees a lock only when its process ends (or the pool is dropped
    /// without finishing), so the tasks such a pool held go back to the queue at once rather
    /// than when their leases expire: a server restarted after a crash picks up what it was
    /// doing as it starts. Pools on other hosts, which cannot see the lock, still wait for
    /// the leases. Default [`Liveness::Auto`].
    pub liveness: Liveness,
    /// Attempts allowed to tasks that lose their lease repeatedly and have no policy of their own.
    pub default_max_attempts: u32,
    /// How long shutdown waits for running tasks before releasing them to the queue.
    pub shutdown_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!(
                "worker-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            concurrency: 16,
            queues: vec![QueueConfig {
                name: DEFAULT_QUEUE.into(),
                limit: None,
            }],
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            prefetch: 64,
            recover_interval: Duration::from_secs(1),
            liveness: Liveness::Auto,
            default_max_attempts: RetryPolicy::default().max_attempts,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkerConfig {
    /// Check the settings fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Build(format!("worker config: {m}")));
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if self.concurrency > MAX_WORKERS {
            return bad(format!(
                "concurrency must be at most {MAX_WORKERS}, got {}",
                self.concurrency
            ));
        }
        if self.prefetch > MAX_WORKERS {
            return bad(format!(
                "prefetch must be at most {MAX_WORKERS}, got {}",
                self.prefetch
            ));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.default_max_attempts == 0 {
            return bad("default_max_attempts must be at least 1".into());
        }
        if self.queues.is_empty() {
            return bad("at least one queue is needed".into());
        }
        let mut seen = HashSet::new();
        for q in &self.queues {
            if !seen.insert(&q.name) {
                return bad(format!("queue '{}' is listed twice", q.name));
            }
            if q.limit == Some(0) {
                return bad(format!("queue '{}': limit must be at least 1", q.name));
            }
            if q.limit.is_some_and(|l| l > MAX_WORKERS) {
                return bad(format!(
                    "queue '{}': limit must be at most {MAX_WORKERS}",
                    q.name
                ));
            }
        }
        for (name, d) in [
            ("lease", self.lease),
            ("heartbeat", self.heartbeat),
            ("poll_interval", self.poll_interval),
            ("recover_interval", self.recover_interval),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be greater than zero"));
            }
        }
        if self.lease > MAX_LEASE {
            return bad(format!(
                "lease must be at most {:?} (a day), got {:?}",
                MAX_LEASE, self.lease
            ));
        }
        if self.heartbeat >= self.lease {
            return bad(format!(
                "heartbeat ({:?}) must be shorter than the lease ({:?})",
                self.heartbeat, self.lease
            ));
        }
        if self.liveness == Liveness::Dir(PathBuf::new()) {
            return bad("liveness directory must not be empty".into());
        }
        Ok(())
    }
}
