//! Intake first: where an enqueue comes from, and the share of the writer's time that
//! processing gets while enqueues from outside flood in.

use super::*;
use std::time::Instant;

/// Where an enqueue comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// From outside the worker pools, like a webhook or API request, which answers only once
    /// its task is committed.
    Intake,
    /// From a task handler: part of processing, like a reply queued for another try.
    Processing,
}

impl Origin {
    /// The origin of an enqueue made by the calling task.
    pub(super) fn of_caller() -> Self {
        if flowbot_core::task::in_task_handler() {
            Origin::Processing
        } else {
            Origin::Intake
        }
    }
}

/// Intake first, while it floods: how much of the writer's time the processing writes may
/// take while enqueues keep coming fast. Intake floods once [`INTAKE_FLOOD`] enqueues are
/// committed within [`INTAKE_WINDOW`], queued up behind each other (at least
/// [`INTAKE_QUEUED`] in a commit on average, so the writer is what the requests wait for),
/// and counts as flooding until a window after that. A trickle of enqueues, or a steady
/// stream the writer keeps up with one or two at a time, never holds processing back: the
/// writer has time for both, and capping processing would only grow the backlog. While intake
/// floods, processing runs on a credit that grows by `share` of the time passing (up to
/// [`WORK_BURST`]) and shrinks by the time its transactions take, and waits while the credit
/// is spent. Otherwise processing has the writer to itself.
pub(super) struct WorkShare {
    share: f64,
    credit: f64,
    last: Instant,
    window_start: Instant,
    window_count: usize,
    window_commits: usize,
    flood_until: Option<Instant>,
}

/// The window over which intake is counted.
const INTAKE_WINDOW: Duration = Duration::from_millis(20);

/// Enqueues within one window that make intake a flood (1,000 a second).
const INTAKE_FLOOD: usize = 20;

/// Enqueues a commit takes on average, within one window, that make intake a flood: that many
/// callers waited for the writer together.
const INTAKE_QUEUED: usize = 4;

/// Most writer time, in seconds, that processing may bank while intake floods.
const WORK_BURST: f64 = 0.002;

impl WorkShare {
    /// A share of `share` (0.01 to 1; out of range, the nearest, and not a number, the
    /// default: [`SqliteStore::open_with`] refuses both before this is reached).
    pub(super) fn new(share: f64) -> Self {
        let now = Instant::now();
        let share = if share.is_nan() {
            DEFAULT_WORK_SHARE
        } else {
            share.clamp(MIN_WORK_SHARE, 1.0)
        };
        WorkShare {
            share,
            credit: WORK_BURST,
            last: now,
            window_start: now,
            window_count: 0,
            window_commits: 0,
            flood_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let passed = now.saturating_duration_since(self.last).as_secs_f64();
        self.credit = (self.credit + passed * self.share).min(WORK_BURST);
        self.last = now;
    }

    fn flooding(&self, now: Instant) -> bool {
        self.share < 1.0 && self.flood_until.is_some_and(|t| now < t)
    }

    /// How long processing must wait before its next transaction; `None`: it may go now.
    pub(super) fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        if !self.flooding(now) || self.credit >= 0.0 {
            return None;
        }
        let ebb = self
            .flood_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        // The share is at least 0.01 and the credit finite, but a conversion that cannot
        // panic costs nothing: past what a Duration holds, wait for the flood to ebb.
        let refilled = Duration::try_from_secs_f64(-self.credit / self.share).unwrap_or(ebb);
        Some(refilled.min(ebb).max(Duration::from_micros(50)))
    }

    /// `n` enqueues from outside were committed together at `at`.
    pub(super) fn intake(&mut self, n: usize, at: Instant) {
        if at.saturating_duration_since(self.window_start) >= INTAKE_WINDOW {
            self.window_start = at;
            self.window_count = 0;
            self.window_commits = 0;
        }
        self.window_count += n;
        self.window_commits += 1;
        if self.window_count >= INTAKE_FLOOD
            && self.window_count >= INTAKE_QUEUED * self.window_commits
        {
            self.flood_until = Some(at + INTAKE_WINDOW);
        }
    }

    pub(super) fn spent(&mut self, took: Duration, now: Instant) {
        self.refill(now);
        if self.flooding(now) {
            self.credit -= took.as_secs_f64();
        } else {
            self.credit = WORK_BURST;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processing waits only while intake floods and its credit is spent, never longer than
    /// until the credit is back or the flood has ebbed; a trickle of intake or a share of 1
    /// never holds it back.
    #[test]
    fn work_share_defers_processing_only_while_intake_floods() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut share = WorkShare::new(0.1);
        assert_eq!(share.wait(t0), None, "no intake: processing goes at once");
        share.spent(ms(5), t0);
        assert_eq!(
            share.wait(t0),
            None,
            "time spent without intake is not counted"
        );
        share.intake(INTAKE_FLOOD - 1, t0);
        share.spent(ms(5), t0);
        assert_eq!(share.wait(t0), None, "a trickle of intake does not count");
        share.intake(1, t0);
        share.spent(ms(5), t0);
        // Credit 2 ms - 5 ms = -3 ms, back at 0.1 s per s in 30 ms; the flood ebbs in 20 ms.
        assert_eq!(share.wait(t0), Some(ms(20)));
        // 10 ms on: credit -2 ms (20 ms to refill), the flood ebbs in 10 ms.
        assert_eq!(share.wait(t0 + ms(10)), Some(ms(10)));
        // The next window floods again.
        share.intake(INTAKE_FLOOD, t0 + ms(25));
        // Credit -2 ms + 1.5 ms = -0.5 ms: 5 ms to refill.
        let near = |d: Option<Duration>, want: Duration| {
            d.is_some_and(|d| d.abs_diff(want) < Duration::from_micros(1))
        };
        assert!(near(share.wait(t0 + ms(25)), ms(5)));
        // The flood ebbed: processing goes.
        assert_eq!(share.wait(t0 + ms(46)), None);
        // A small overdraft waits for its refill alone.
        let mut share = WorkShare::new(0.5);
        share.intake(INTAKE_FLOOD, t0);
        share.spent(ms(3), t0);
        assert!(near(share.wait(t0), ms(2)));
        let mut share = WorkShare::new(1.0);
        share.intake(INTAKE_FLOOD, t0);
        share.spent(ms(100), t0);
        assert_eq!(share.wait(t0), None, "share 1: intake has no priority");
    }

    /// A fast stream the writer commits one or two at a time is not a flood, however fast:
    /// processing keeps the writer's spare time, so the backlog does not grow while the
    /// writer idles. Once the enqueues queue up behind each other, it is.
    #[test]
    fn a_stream_the_writer_keeps_up_with_is_no_flood() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let mut share = WorkShare::new(0.1);
        // 10,000 enqueues a second, each committed alone, for a second.
        for i in 0..10_000 {
            let at = t0 + us(i * 100);
            share.intake(1, at);
            share.spent(us(90), at);
            assert_eq!(share.wait(at), None, "one at a time, at {i}");
        }
        // Two in a commit on average (one, then three): still kept up with.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..100 {
            let at = t1 + us(i * 200);
            share.intake(if i % 2 == 0 { 1 } else { 3 }, at);
            share.spent(us(190), at);
            assert_eq!(share.wait(at), None, "two at a time, at {i}");
        }
        // Callers queued up: eight in each commit.
        let t2 = t1 + Duration::from_millis(100);
        for i in 0..10 {
            share.intake(8, t2 + us(i * 100));
        }
        share.spent(Duration::from_millis(5), t2 + us(1_000));
        assert!(
            share.wait(t2 + us(1_000)).is_some(),
            "queued intake floods and defers processing"
        );
    }

    /// Under a steady stream of enqueues, claims and completions still get their share: the
    /// stream does not starve processing, and every task claimed is completed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processing_keeps_its_share_under_steady_intake() {
        let dir = std::env::temp_dir().join(format!("flowbot-share-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = SqliteStore::open_with(SqliteOptions {
            work_share: 0.05,
            ..SqliteOptions::new(dir.join("flowbot.db"))
        })
        .await
        .expect("open");
        let stop = CancellationToken::new();
        let mut intake = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (store, stop) = (store.clone(), stop.clone());
            intake.spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    store
                        .enqueue(&NewTask::new("job", &(w, n)).expect("payload"))
                        .await
                        .expect("enqueue");
                    n += 1;
                }
                n
            });
        }
        let kinds = vec!["job".to_owned()];
        let mut done = 0u64;
        let processing = async {
            while done < 500 {
                let claimed = store
                    .claim(&ClaimRequest {
                        worker: "w",
                        queue: flowbot_core::task::DEFAULT_QUEUE,
                        kinds: &kinds,
                        limit: 10,
                        lease: Duration::from_secs(30),
                    })
                    .await
                    .expect("claim");
                let ids: Vec<TaskId> = claimed.iter().map(|t| t.id).collect();
                done += store.complete("w", &ids).await.expect("complete");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), processing)
            .await
            .expect("500 tasks processed while the intake never stopped");
        stop.cancel();
        let mut enqueued = 0;
        while let Some(n) = intake.join_next().await {
            enqueued += n.expect("enqueuer");
        }
        let counts = store.count_tasks().await.expect("count");
        let of = |s: TaskState| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
        assert!(done >= 500);
        assert_eq!(of(TaskState::Done), i64::try_from(done).expect("count"));
        assert_eq!(
            i64::try_from(enqueued).expect("count"),
            of(TaskState::Done) + of(TaskState::Queued)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A handler's enqueues are processing, the same call from outside a pool is intake.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn enqueues_from_handlers_are_processing() {
        use flowbot_core::task::{TaskRegistry, WorkerConfig, WorkerPool, handler_fn};
        assert_eq!(Origin::of_caller(), Origin::Intake);
        let dir = std::env::temp_dir().join(format!("flowbot-origin-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = SqliteStore::open_in_dir(&dir).await.expect("open");
        let (seen_tx, mut seen_rx) = mpsc::channel(1);
        let mut registry = TaskRegistry::new();
        registry
            .register(
                "job",
                handler_fn(move |_cx| {
                    let seen = seen_tx.clone();
                    async move {
                        let _ = seen.send(Origin::of_caller()).await;
                        Ok(())
                    }
                }),
            )
            .expect("register");
        store
            .enqueue(&NewTask::new("job", &1u32).expect("payload"))
            .await
            .expect("enqueue");
        let pool = WorkerPool::new(
            Arc::new(store.clone()),
            Arc::new(registry),
            WorkerConfig::default(),
        )
        .expect("pool");
        let stop = CancellationToken::new();
        let running = tokio::spawn(pool.run(stop.clone()));
        let seen = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("the handler ran");
        assert_eq!(seen, Some(Origin::Processing));
        stop.cancel();
        running.await.expect("pool stopped");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Any share, NaN and infinities included, and any sequence of intake and time spent:
    /// `wait` never panics and never asks for more than the flood's remaining window.
    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Intake(usize, u64),
            Spent(Duration, u64),
            Wait(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            let took = prop_oneof![
                (0u64..10_000_000).prop_map(Duration::from_nanos),
                any::<u64>().prop_map(Duration::from_secs),
                Just(Duration::MAX),
            ];
            prop_oneof![
                (0usize..100, 0u64..50_000).prop_map(|(n, at)| Op::Intake(n, at)),
                (took, 0u64..50_000).prop_map(|(d, at)| Op::Spent(d, at)),
                (0u64..50_000).prop_map(Op::Wait),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn wait_never_panics(
                share in prop_oneof![
                    any::<f64>(),
                    Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY),
                    Just(0.0), Just(-0.0), Just(f64::MIN_POSITIVE), Just(1e-300),
                    0.0f64..=1.0,
                ],
                ops in prop::collection::vec(op(), 0..64),
            ) {
                // Each op happens the given number of microseconds after the one before.
                let mut now = Instant::now();
                let mut ws = WorkShare::new(share);
                prop_assert!((MIN_WORK_SHARE..=1.0).contains(&ws.share));
                for op in ops {
                    match op {
                        Op::Intake(n, later) => {
                            now += Duration::from_micros(later);
                            ws.intake(n, now);
                        }
                        Op::Spent(d, later) => {
                            now += Duration::from_micros(later);
                            ws.spent(d, now);
                        }
                        Op::Wait(later) => {
                            now += Duration::from_micros(later);
                            if let Some(d) = ws.wait(now) {
                                prop_assert!(d <= INTAKE_WINDOW);
                            }
                        }
                    }
                }
                let options = SqliteOptions { work_share: share, ..SqliteOptions::new("unused.db") };
                match options.validate() {
                    Ok(()) => prop_assert!((0.01..=1.0).contains(&share)),
                    Err(e) => prop_assert!(e.to_string().contains("work_share must be a number from 0.01 to 1"), "{e}"),
                }
            }
        }
    }

    /// A NaN share is refused when the store opens, before anything is created.
    #[tokio::test]
    async fn open_refuses_a_share_that_is_not_a_number() {
        let dir = std::env::temp_dir().join(format!("flowbot-share-{}", uuid::Uuid::new_v4()));
        let e = SqliteStore::open_with(SqliteOptions {
            work_share: f64::NAN,
            ..SqliteOptions::new(dir.join("flowbot.db"))
        })
        .await
        .expect_err("NaN is refused");
        assert!(matches!(e, Error::InvalidOption(_)), "{e}");
        assert!(!dir.exists(), "nothing was created");
    }
}
