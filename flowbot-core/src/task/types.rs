//! Task values: what is enqueued, what a worker claims, what the API lists.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Largest payload accepted by default (1 MiB of serialised JSON).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The queue used when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// The furthest ahead anything is scheduled: 3650 days (about 10 years).
///
/// Longer delays are refused where they enter (a workflow's `delay`, `until`, `wait.timeout`
/// and `timeout`; a retry policy's `delay` and `max_delay`, see [`RetryPolicy::validate`]);
/// where a delay comes from a computation rather than from input ([`RetryPolicy::delay`],
/// [`NewTask::delay`], [`TaskError::retry_after`](crate::TaskError::retry_after)) it is cut
/// down to this, so no date arithmetic on it can overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// `now + delay`, with `delay` cut down to [`MAX_DELAY`] and the sum to the latest time
/// chrono can hold: never panics.
pub(crate) fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    let delay = chrono::Duration::from_std(delay.min(MAX_DELAY)).unwrap_or(chrono::Duration::MAX);
    now.checked_add_signed(delay)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `d` as "N days", for messages about limits.
pub(crate) fn days(d: Duration) -> String {
    format!("{} days", d.as_secs() / (24 * 3600))
}

/// Store-assigned task id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub i64);

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Life cycle of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for `run_at` and a free worker.
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Finished successfully.
    Done,
    /// Failed its last attempt (or failed permanently): in the dead-letter list.
    Dead,
    /// Cancelled before it ran.
    Cancelled,
}

impl TaskState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "done" => TaskState::Done,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }
}

/// How the delay before a retry grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed {
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// `delay × attempt`.
    Linear {
        /// Delay in milliseconds after the first attempt.
        delay_ms: u64,
    },
    /// `delay × factor^(attempt − 1)`.
    Exponential {
        /// Delay in milliseconds after the first attempt.
        delay_ms: u64,
        /// Growth factor, at least 1.
        factor: f64,
    },
}

/// When and how often a failed task is tried again.
///
/// Build one with [`RetryPolicy::new`] and the setters; every value is checked by
/// [`RetryPolicy::validate`] (also when deserialised), so a policy in hand is always usable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRetryPolicy")]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// Upper bound of a delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Random share taken off each delay, from 0 (none) to 1 (anywhere from 0 to the delay).
    pub jitter: f64,
}

#[derive(Deserialize)]
struct RawRetryPolicy {
    max_attempts: i64,
    backoff: Backoff,
    #[serde(default = "default_max_delay_ms")]
    max_delay_ms: i64,
    #[serde(default)]
    jitter: f64,
}

fn default_max_delay_ms() -> i64 {
    3_600_000
}

impl TryFrom<RawRetryPolicy> for RetryPolicy {
    type Error = Error;

    fn try_from(raw: RawRetryPolicy) -> Result<Self> {
        let max_attempts = u32::try_from(raw.max_attempts).map_err(|_| {
            Error::InvalidRetry(format!(
                "max_attempts must be between 1 and {}, got {}",
                u32::MAX,
                raw.max_attempts
            ))
        })?;
        let max_delay_ms = u64::try_from(raw.max_delay_ms).map_err(|_| {
            Error::InvalidRetry(format!(
                "max_delay_ms must be positive, got {}",
                raw.max_delay_ms
            ))
        })?;
        let policy = RetryPolicy {
            max_attempts,
            backoff: raw.backoff,
            max_delay_ms,
            jitter: raw.jitter,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl Default for RetryPolicy {
    /// 5 attempts, exponential backoff from 1 s doubling, at most 10 minutes, 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::Exponential {
                delay_ms: 1_000,
                factor: 2.0,
            },
            max_delay_ms: 600_000,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts and the default backoff.
    pub fn new(max_attempts: u32) -> Result<Self> {
        let p = RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        };
        p.validate()?;
        Ok(p)
    }

    /// Never retry: the first failure dead-letters the task.
    pub fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The same delay before every retry.
    pub fn fixed(self, delay: Duration) -> Result<Self> {
        self.with_backoff(Backoff::Fixed {
            delay_ms: millis(delay),
        })
    }

    /// Delay growing linearly: `delay × attempt`.
    pub fn linear(self, delay: Duration) -> Result<Self> {
        self.with_backoff(Backoff::Linear {
            delay_ms: millis(delay),
        })
    }

    /// Delay growing exponentially: `delay × factor^(attempt − 1)`.
    pub fn exponential(self, delay: Duration, factor: f64) -> Result<Self> {
        self.with_backoff(Backoff::Exponential {
            delay_ms: millis(delay),
            factor,
        })
    }

    /// Cap every delay at `max`.
    pub fn max_delay(mut self, max: Duration) -> Result<Self> {
        self.max_delay_ms = millis(max);
        self.validate()?;
        Ok(self)
    }

    /// Take a random share of up to `jitter` (0..=1) off each delay.
    pub fn jitter(mut self, jitter: f64) -> Result<Self> {
        self.jitter = jitter;
        self.validate()?;
        Ok(self)
    }

    fn with_backoff(mut self, backoff: Backoff) -> Result<Self> {
        self.backoff = backoff;
        self.validate()?;
        Ok(self)
    }

    /// Check every setting is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRetry(m));
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1, got 0".into());
        }
        match self.backoff {
            Backoff::Fixed { delay_ms } | Backoff::Linear { delay_ms } if delay_ms == 0 => {
                return bad("backoff delay must be greater than zero".into());
            }
            Backoff::Exponential { delay_ms, factor } => {
                if delay_ms == 0 {
                    return bad("backoff delay must be greater than zero".into());
                }
                if !(factor.is_finite() && factor >= 1.0) {
                    return bad(format!(
                        "exponential factor must be a number >= 1, got {factor}"
                    ));
                }
            }
            _ => {}
        }
        let delay_ms = match self.backoff {
            Backoff::Fixed { delay_ms }
            | Backoff::Linear { delay_ms }
            | Backoff::Exponential { delay_ms, .. } => delay_ms,
        };
        let most = millis(MAX_DELAY);
        if delay_ms > most {
            return bad(format!(
                "backoff delay must be at most {} (about 10 years), got {}",
                days(MAX_DELAY),
                humantime::format_duration(Duration::from_millis(delay_ms))
            ));
        }
        if self.max_delay_ms == 0 {
            return bad("max_delay must be greater than zero".into());
        }
        if self.max_delay_ms > most {
            return bad(format!(
                "max_delay must be at most {} (about 10 years), got {}",
                days(MAX_DELAY),
                humantime::format_duration(Duration::from_millis(self.max_delay_ms))
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        Ok(())
    }

    /// The delay before the attempt after `failed_attempt` (1-based), before jitter: at most
    /// `max_delay`, and never more than [`MAX_DELAY`], whatever the fields hold (they are
    /// public, so a policy built without [`RetryPolicy::validate`] is cut down, not trusted).
    pub fn base_delay(&self, failed_attempt: u32) -> Duration {
        let n = failed_attempt.max(1);
        let ms = match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms as f64,
            Backoff::Linear { delay_ms } => delay_ms as f64 * f64::from(n),
            Backoff::Exponential { delay_ms, factor } => {
                delay_ms as f64 * factor.powi(i32::try_from(n - 1).unwrap_or(i32::MAX))
            }
        };
        let cap = self.max_delay_ms.min(millis(MAX_DELAY));
        // `f64::min` ignores a NaN (a NaN factor), and `as` saturates: no overflow either way.
        Duration::from_millis(ms.min(cap as f64) as u64)
    }

    /// The delay before the attempt after `failed_attempt`, with jitter applied (a jitter
    /// outside 0..=1, or not a number, counts as the nearest valid one, or none).
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let base = self.base_delay(failed_attempt);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        if jitter == 0.0 {
            return base;
        }
        // A factor in 0..=1 of a delay of at most MAX_DELAY: `mul_f64` cannot panic.
        base.mul_f64((1.0 - jitter * fastrand::f64()).clamp(0.0, 1.0))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A task to enqueue. Build it with [`NewTask::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Queue name ([`DEFAULT_QUEUE`] unless set).
    pub queue: String,
    /// Task kind: selects the handler.
    pub kind: String,
    /// Payload, serialised JSON.
    pub payload: String,
    /// Earliest start; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Lower runs first among due tasks of a queue.
    pub priority: i16,
    /// Retry policy overriding the kind's.
    pub retry: Option<RetryPolicy>,
    /// While a live (queued or running) task has this key, enqueueing another is a no-op.
    pub dedupe_key: Option<String>,
    /// Tasks with the same key run one at a time across every worker, in enqueue order: a
    /// task waits while an older task of its key is queued (even if delayed for a retry) or
    /// running.
    pub concurrency_key: Option<String>,
}

impl NewTask {
    /// A task of `kind` with a payload serialised from `payload`.
    pub fn new(kind: impl Into<String>, payload: &impl Serialize) -> Result<Self> {
        let kind = kind.into();
        let payload = serde_json::to_string(payload)
            .map_err(|e| Error::json(format!("payload of task '{kind}'"), e))?;
        Ok(NewTask {
            queue: DEFAULT_QUEUE.to_owned(),
            kind,
            payload,
            run_at: None,
            priority: 0,
            retry: None,
            dedupe_key: None,
            concurrency_key: None,
        })
    }

    /// Put the task on `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Start no earlier than `at`.
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Start no earlier than `delay` from now (a delay over [`MAX_DELAY`] counts as
    /// [`MAX_DELAY`]).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(after(crate::clock::now(), delay));
        self
    }

    /// Priority (lower first).
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Retry policy for this task only.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Skip enqueueing while a live task has this key.
    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// Run one at a time with other tasks of this key (e.g. a conversation id).
    pub fn concurrency_key(mut self, key: impl Into<String>) -> Self {
        self.concurrency_key = Some(key.into());
        self
    }

    /// Check the task can be stored: names not empty or oversized, payload within
    /// `max_payload_bytes`, retry policy valid.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidTask {
                kind: self.kind.clone(),
                reason,
            })
        };
        for (field, value) in [("kind", Some(&self.kind)), ("queue", Some(&self.queue))]
            .into_iter()
            .chain([("dedupe_key", self.dedupe_key.as_ref())])
            .chain([("concurrency_key", self.concurrency_key.as_ref())])
        {
            let Some(value) = value else { continue };
            if value.is_empty() {
                return bad(format!("{field} must not be empty"));
            }
            if value.len() > 255 {
                return bad(format!(
                    "{field} is {} bytes, over the limit of 255",
                    value.len()
                ));
            }
        }
        if self.payload.len() > max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                kind: self.kind.clone(),
                size: self.payload.len(),
                limit: max_payload_bytes,
            });
        }
        if let Some(policy) = &self.retry {
            policy.validate()?;
        }
        Ok(())
    }
}

/// Whether an enqueue stored a new task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "id", rename_all = "snake_case")]
pub enum Enqueued {
    /// A new task was stored.
    New(TaskId),
    /// A live task with the same dedupe key exists; nothing was stored.
    Duplicate(TaskId),
}

impl Enqueued {
    /// The id of the new or existing task.
    pub fn id(self) -> TaskId {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// A task claimed by a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// Id.
    pub id: TaskId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// Payload JSON.
    pub payload: String,
    /// This attempt's number, 1 for the first.
    pub attempt: u32,
    /// Per-task retry policy, if one was given.
    pub retry: Option<RetryPolicy>,
    /// Dedupe key.
    pub dedupe_key: Option<String>,
    /// Concurrency key.
    pub concurrency_key: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When it was due.
    pub run_at: DateTime<Utc>,
}

impl ClaimedTask {
    /// Deserialise the payload.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload)
            .map_err(|e| Error::json(format!("payload of task {} ('{}')", self.id, self.kind), e))
    }

    /// A key that is the same for every attempt of this task, for idempotent side effects:
    /// the dedupe key if one was given, else `task-<id>`.
    pub fn idempotency_key(&self) -> String {
        self.dedupe_key
            .clone()
            .unwrap_or_else(|| format!("task-{}", self.id))
    }
}

/// A task as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: TaskId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: TaskState,
    /// Payload.
    pub payload: Value,
    /// Attempts started so far.
    pub attempts: u32,
    /// Priority.
    pub priority: i16,
    /// Earliest start.
    pub run_at: DateTime<Utc>,
    /// Enqueue time.
    pub created_at: DateTime<Utc>,
    /// Time it reached done, dead or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Most recent error.
    pub last_error: Option<String>,
    /// Dedupe key.
    pub dedupe_key: Option<String>,
    /// Concurrency key.
    pub concurrency_key: Option<String>,
    /// Worker holding the lease (running tasks).
    pub lease_owner: Option<String>,
}

/// One failed attempt in a task's error history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// Attempt number.
    pub attempt: u32,
    /// Error message.
    pub error: String,
    /// When it failed.
    pub at: DateTime<Utc>,
}

/// A dead-lettered task with its whole error history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task.
    pub task: TaskRecord,
    /// Why it was dead-lettered (its last error).
    pub reason: String,
    /// When.
    pub died_at: DateTime<Utc>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

/// Filter for [`TaskAdmin::list_tasks`](crate::task::TaskAdmin::list_tasks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this kind.
    pub kind: Option<String>,
    /// Only tasks of this queue.
    pub queue: Option<String>,
    /// Cursor from a previous page.
    pub cursor: Option<String>,
    /// Page size (the store caps it at 1000).
    pub limit: u32,
}

/// Outcome of recording a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back in the queue, due at this time.
    Retrying(DateTime<Utc>),
    /// Dead-lettered.
    DeadLettered,
    /// The worker no longer held the lease; nothing was changed.
    LeaseLost,
}

/// A failed attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The task.
    pub id: TaskId,
    /// The attempt that failed.
    pub attempt: u32,
    /// Error message.
    pub error: String,
    /// `Some(time)` to retry at that time, `None` to dead-letter.
    pub retry_at: Option<DateTime<Utc>>,
}

/// What a worker asks of [`TaskQueue::claim`](crate::task::TaskQueue::claim).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest<'a> {
    /// The claiming worker's id (recorded as lease owner).
    pub worker: &'a str,
    /// Queue to claim from.
    pub queue: &'a str,
    /// Task kinds this worker can run.
    pub kinds: &'a [String],
    /// Most tasks to claim.
    pub limit: u32,
    /// Lease length.
    pub lease: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_shapes() {
        let p = RetryPolicy::new(5)
            .and_then(|p| p.exponential(Duration::from_millis(100), 2.0))
            .and_then(|p| p.max_delay(Duration::from_millis(500)))
            .and_then(|p| p.jitter(0.0))
            .expect("valid policy");
        let delays: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        let p = p.linear(Duration::from_millis(10)).expect("valid");
        assert_eq!(p.delay(3), Duration::from_millis(30));
        let p = p.fixed(Duration::from_millis(7)).expect("valid");
        assert_eq!(p.delay(9), Duration::from_millis(7));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy::new(3)
            .and_then(|p| p.fixed(Duration::from_millis(1000)))
            .and_then(|p| p.jitter(0.5))
            .expect("valid");
        for _ in 0..1000 {
            let d = p.delay(1).as_millis();
            assert!((500..=1000).contains(&d), "{d}");
        }
    }

    #[test]
    fn invalid_retry_settings_are_rejected_with_a_reason() {
        let e = RetryPolicy::new(0).expect_err("zero attempts");
        assert!(
            e.to_string().contains("max_attempts must be at least 1"),
            "{e}"
        );
        let e = RetryPolicy::default()
            .fixed(Duration::ZERO)
            .expect_err("zero delay");
        assert!(e.to_string().contains("greater than zero"), "{e}");
        let e = RetryPolicy::default()
            .exponential(Duration::from_secs(1), 0.5)
            .expect_err("shrinking factor");
        assert!(e.to_string().contains("factor"), "{e}");
        let e = RetryPolicy::default().jitter(1.5).expect_err("jitter");
        assert!(e.to_string().contains("jitter"), "{e}");
        let e = serde_json::from_str::<RetryPolicy>(
            r#"{"max_attempts": -3, "backoff": {"kind": "fixed", "delay_ms": 10}}"#,
        )
        .expect_err("negative attempts");
        assert!(e.to_string().contains("max_attempts"), "{e}");
        let e = serde_json::from_str::<RetryPolicy>(
            r#"{"max_attempts": 3, "backoff": {"kind": "fixed", "delay_ms": 10}, "max_delay_ms": -1}"#,
        )
        .expect_err("negative max delay");
        assert!(e.to_string().contains("max_delay_ms"), "{e}");
        let ok: RetryPolicy = serde_json::from_str(
            r#"{"max_attempts": 3, "backoff": {"kind": "linear", "delay_ms": 10}}"#,
        )
        .expect("valid policy JSON");
        assert_eq!(ok.max_attempts, 3);
    }

    #[test]
    fn task_validation() {
        let t = NewTask::new("k", &"x".repeat(100)).expect("serialise");
        let e = t.validate(50).expect_err("too large");
        assert!(
            matches!(
                e,
                Error::PayloadTooLarge {
                    size: 102,
                    limit: 50,
                    ..
                }
            ),
            "{e}"
        );
        let t = NewTask::new("", &1).expect("serialise");
        assert!(
            t.validate(100)
                .expect_err("empty kind")
                .to_string()
                .contains("kind must not")
        );
        let t = NewTask::new("k", &1)
            .expect("serialise")
            .queue("q".repeat(300));
        assert!(
            t.validate(100)
                .expect_err("long queue")
                .to_string()
                .contains("queue is 300")
        );
    }
}
