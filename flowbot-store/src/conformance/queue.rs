//! The task queue: enqueue, claim, leases, retries, dead letters, keys, schedules and the
//! admin views (`TaskQueue`, `TaskAdmin`, `ScheduleStore`).

use super::*;

/// Tasks are claimed by priority then due time, leased to one worker, and completed only by it.
pub async fn enqueue_claim_complete(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let a = store.enqueue(&task("noop", 1)).await.expect("enqueue").id();
    let b = store
        .enqueue(&task("noop", 2).priority(-1))
        .await
        .expect("enqueue")
        .id();
    let c = store.enqueue(&task("noop", 3)).await.expect("enqueue").id();
    store
        .enqueue(&task("other-kind", 4))
        .await
        .expect("enqueue");
    store
        .enqueue(&task("noop", 5).queue("elsewhere"))
        .await
        .expect("enqueue");
    store
        .enqueue(&task("noop", 6).delay(Duration::from_secs(3600)))
        .await
        .expect("enqueue");

    let first = claim(store.as_ref(), "w1", &k, 2, LEASE).await;
    let ids: Vec<TaskId> = first.iter().map(|t| t.id).collect();
    // Priority first (lower runs first), then due time.
    assert!(ids.contains(&b) && ids.contains(&a), "claimed {ids:?}");
    assert!(first.iter().all(|t| t.attempt == 1));
    assert_eq!(
        first
            .iter()
            .find(|t| t.id == a)
            .expect("a")
            .payload::<serde_json::Value>()
            .expect("json")["n"],
        1
    );
    let second = claim(store.as_ref(), "w2", &k, 10, LEASE).await;
    assert_eq!(
        second.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![c],
        "other kinds, queues and future tasks are not claimed"
    );
    assert_eq!(state_of(store.as_ref(), a).await, TaskState::Running);

    // Completion is fenced by the lease owner.
    assert_eq!(store.complete("w2", &[a]).await.expect("complete"), 0);
    assert_eq!(store.complete("w1", &[a, b]).await.expect("complete"), 2);
    assert_eq!(
        store.complete("w1", &[a, b]).await.expect("complete twice"),
        0
    );
    assert_eq!(store.complete("w2", &[c]).await.expect("complete"), 1);
    for id in [a, b, c] {
        let rec = store.get_task(id).await.expect("get").expect("exists");
        assert_eq!(rec.state, TaskState::Done);
        assert!(rec.finished_at.is_some());
        assert_eq!(rec.attempts, 1);
    }
    assert!(claim(store.as_ref(), "w1", &k, 10, LEASE).await.is_empty());
}

/// A batch is enqueued in one transaction, in order.
pub async fn batch_enqueue_keeps_order(store: Arc<dyn Store>) {
    // Small and large batches (SQLite inserts up to 64 rows with bound values, more as one
    // JSON array).
    for size in [50u64, 150] {
        let tasks: Vec<NewTask> = (0..size).map(|n| task("noop", n)).collect();
        let out = store.enqueue_batch(&tasks).await.expect("batch");
        assert_eq!(out.len(), size as usize);
        let ids: Vec<TaskId> = out.iter().map(|e| e.id()).collect();
        for (i, id) in ids.iter().enumerate() {
            let rec = store.get_task(*id).await.expect("get").expect("exists");
            assert_eq!(rec.payload["n"], i as u64, "batch ids map to input order");
        }
    }
    let mixed = vec![
        task("noop", 100).dedupe_key("d1"),
        task("noop", 101).dedupe_key("d1"),
        task("noop", 102),
    ];
    let out = store
        .enqueue_batch(&mixed)
        .await
        .expect("batch with dedupe keys");
    assert!(matches!(out[0], Enqueued::New(_)));
    assert_eq!(out[1], Enqueued::Duplicate(out[0].id()));
    assert!(matches!(out[2], Enqueued::New(_)));
}

/// A dedupe key makes a second enqueue a no-op while a task with that key is queued or running.
pub async fn dedupe_keys(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let first = store
        .enqueue(&task("noop", 1).dedupe_key("order-7"))
        .await
        .expect("enqueue");
    let Enqueued::New(id) = first else {
        panic!("first enqueue must store: {first:?}")
    };
    assert_eq!(
        store
            .enqueue(&task("noop", 2).dedupe_key("order-7"))
            .await
            .expect("enqueue"),
        Enqueued::Duplicate(id)
    );
    // Still a duplicate while running.
    let claimed = claim(store.as_ref(), "w", &k, 10, LEASE).await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].idempotency_key(), "order-7");
    assert_eq!(
        store
            .enqueue(&task("noop", 3).dedupe_key("order-7"))
            .await
            .expect("enqueue"),
        Enqueued::Duplicate(id)
    );
    store.complete("w", &[id]).await.expect("complete");
    // Once finished, the key is free again.
    let again = store
        .enqueue(&task("noop", 4).dedupe_key("order-7"))
        .await
        .expect("enqueue");
    assert!(
        matches!(again, Enqueued::New(new) if new != id),
        "{again:?}"
    );
}

/// A task whose lease expired goes back to the queue (the attempt counted) and the old worker is fenced out.
pub async fn lease_expiry_and_recovery(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let id = store.enqueue(&task("noop", 1)).await.expect("enqueue").id();
    // A lease long enough that the checks below surely run inside it, even on a busy host.
    let claimed = claim(
        store.as_ref(),
        "crashed-worker",
        &k,
        10,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(claimed.len(), 1);
    // Not expired yet: nothing to recover, nobody else can claim it.
    assert_eq!(
        store
            .recover_expired(flowbot_core::clock::now(), 5)
            .await
            .expect("recover"),
        0
    );
    assert!(claim(store.as_ref(), "w2", &k, 10, LEASE).await.is_empty());
    recovered_once(store.as_ref(), "the crashed worker's lease expires").await;
    assert_eq!(
        store
            .recover_expired(flowbot_core::clock::now(), 5)
            .await
            .expect("recover again"),
        0
    );
    let again = claim(store.as_ref(), "w2", &k, 10, LEASE).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2, "the lost attempt counts");
    // The crashed worker cannot complete or fail what w2 now holds.
    assert_eq!(
        store
            .complete("crashed-worker", &[id])
            .await
            .expect("complete"),
        0
    );
    let f = Failure {
        id,
        attempt: 1,
        error: "late".into(),
        retry_at: None,
    };
    assert_eq!(
        store.fail("crashed-worker", &f).await.expect("fail"),
        FailOutcome::LeaseLost
    );
    assert_eq!(
        store
            .heartbeat("crashed-worker", &[id], LEASE)
            .await
            .expect("heartbeat"),
        vec![]
    );
    assert_eq!(
        store
            .heartbeat("w2", &[id], LEASE)
            .await
            .expect("heartbeat"),
        vec![id]
    );
    assert_eq!(store.complete("w2", &[id]).await.expect("complete"), 1);
    assert_eq!(state_of(store.as_ref(), id).await, TaskState::Done);

    // A task that keeps losing its lease is dead-lettered after max attempts.
    let id = store
        .enqueue(&task("noop", 2).retry(RetryPolicy::new(2).expect("policy")))
        .await
        .expect("enqueue")
        .id();
    for _ in 0..2 {
        assert_eq!(
            claim(store.as_ref(), "w", &k, 10, Duration::from_millis(1))
                .await
                .len(),
            1
        );
        recovered_once(store.as_ref(), "the short lease expires").await;
    }
    assert_eq!(state_of(store.as_ref(), id).await, TaskState::Dead);
    let dead = store.dead_letters(None, 10).await.expect("dead letters");
    let letter = dead
        .items
        .iter()
        .find(|d| d.task.id == id)
        .expect("dead-lettered");
    assert_eq!(letter.errors.len(), 2);
    assert!(letter.reason.contains("lease expired"));
}

/// A worker that lost a task's lease and releases it afterwards (its shutdown after a long
/// pause) changes nothing: the task's new holder keeps the task and its concurrency key, so
/// an older task of that key, put back in the queue meanwhile, still waits.
pub async fn a_stale_release_changes_nothing(store: Arc<dyn Store>) {
    let k = kinds(&["job"]);
    let older = store
        .enqueue(
            &task("job", 1)
                .concurrency_key("conv")
                .retry(RetryPolicy::new(1).expect("policy")),
        )
        .await
        .expect("enqueue")
        .id();
    let newer = store
        .enqueue(&task("job", 2).concurrency_key("conv"))
        .await
        .expect("enqueue")
        .id();
    // The older task dies, so the newer one runs.
    let first = claim(store.as_ref(), "w", &k, 10, LEASE).await;
    assert_eq!(first.iter().map(|t| t.id).collect::<Vec<_>>(), [older]);
    let failure = Failure {
        id: older,
        attempt: 1,
        error: "boom".into(),
        retry_at: None,
    };
    assert_eq!(
        store.fail("w", &failure).await.expect("fail"),
        FailOutcome::DeadLettered
    );
    let stale = claim(store.as_ref(), "stale", &k, 10, Duration::from_secs(2)).await;
    assert_eq!(stale.iter().map(|t| t.id).collect::<Vec<_>>(), [newer]);
    recovered_once(store.as_ref(), "the stale worker's lease expires").await;
    let fresh = claim(store.as_ref(), "fresh", &k, 10, LEASE).await;
    assert_eq!(fresh.iter().map(|t| t.id).collect::<Vec<_>>(), [newer]);
    assert_eq!(store.release("stale", &[newer]).await.expect("release"), 0);
    assert_eq!(state_of(store.as_ref(), newer).await, TaskState::Running);
    // The older task back in the queue waits for the key the fresh worker holds.
    assert!(store.requeue_dead(older).await.expect("requeue"));
    assert!(
        claim(store.as_ref(), "other", &k, 10, LEASE)
            .await
            .is_empty(),
        "the key is still held by the fresh worker"
    );
    assert_eq!(
        store.complete("fresh", &[newer]).await.expect("complete"),
        1
    );
    let next = claim(store.as_ref(), "other", &k, 10, LEASE).await;
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [older]);
}

/// Wait until `recover_expired` returns one task (its lease expired, by the clock), and fail
/// if it ever returns more.
async fn recovered_once(store: &dyn Store, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .recover_expired(flowbot_core::clock::now(), 5)
            .await
            .expect("recover")
        {
            0 => {}
            1 => return,
            n => panic!("{what}: {n} tasks recovered, one expected"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A failed attempt goes back to the queue at its retry time, with its error recorded.
pub async fn retries_and_backoff(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let id = store.enqueue(&task("noop", 1)).await.expect("enqueue").id();
    let t = claim(store.as_ref(), "w", &k, 10, LEASE).await.remove(0);
    let retry_at = flowbot_core::clock::now() + chrono::Duration::milliseconds(400);
    let f = Failure {
        id,
        attempt: t.attempt,
        error: "boom 1".into(),
        retry_at: Some(retry_at),
    };
    assert_eq!(
        store.fail("w", &f).await.expect("fail"),
        FailOutcome::Retrying(retry_at)
    );
    let rec = store.get_task(id).await.expect("get").expect("exists");
    assert_eq!(rec.state, TaskState::Queued);
    assert_eq!(rec.last_error.as_deref(), Some("boom 1"));
    assert_eq!(rec.run_at.timestamp_millis(), retry_at.timestamp_millis());
    assert!(
        claim(store.as_ref(), "w", &k, 10, LEASE).await.is_empty(),
        "not before the backoff delay"
    );
    flowbot_core::clock::skip(Duration::from_millis(500));
    let t = claim(store.as_ref(), "w", &k, 10, LEASE).await;
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].attempt, 2);
}

/// A task out of attempts is dead-lettered with its error history, and can be requeued.
pub async fn dead_letter_and_requeue(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let id = store.enqueue(&task("noop", 1)).await.expect("enqueue").id();
    for attempt in 1..=2 {
        let t = claim(store.as_ref(), "w", &k, 10, LEASE).await.remove(0);
        assert_eq!(t.attempt, attempt);
        let retry_at = (attempt == 1).then(Utc::now);
        let f = Failure {
            id,
            attempt,
            error: format!("boom {attempt}"),
            retry_at,
        };
        let outcome = store.fail("w", &f).await.expect("fail");
        if attempt == 2 {
            assert_eq!(outcome, FailOutcome::DeadLettered);
        }
    }
    assert_eq!(state_of(store.as_ref(), id).await, TaskState::Dead);
    assert!(claim(store.as_ref(), "w", &k, 10, LEASE).await.is_empty());
    let page = store.dead_letters(None, 10).await.expect("dead letters");
    assert_eq!(page.items.len(), 1);
    let letter = &page.items[0];
    assert_eq!(letter.task.id, id);
    assert_eq!(letter.reason, "boom 2");
    let history: Vec<(u32, &str)> = letter
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(history, vec![(1, "boom 1"), (2, "boom 2")]);

    assert!(store.requeue_dead(id).await.expect("requeue"));
    assert!(!store.requeue_dead(id).await.expect("requeue twice"));
    assert!(
        store
            .dead_letters(None, 10)
            .await
            .expect("dead letters")
            .items
            .is_empty()
    );
    let t = claim(store.as_ref(), "w", &k, 10, LEASE).await;
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].attempt, 1, "a re-queued task starts counting again");
}

/// Enqueue a no-op task numbered `n` under the concurrency key `key`.
async fn keyed(store: &dyn Store, n: u64, key: &str) -> TaskId {
    store
        .enqueue(&task("noop", n).concurrency_key(key))
        .await
        .expect("enqueue")
        .id()
}

/// The ids of the tasks `worker` claims (up to 10).
async fn claimed_ids(
    store: &dyn Store,
    worker: &str,
    kinds: &[String],
    lease: Duration,
) -> Vec<TaskId> {
    claim(store, worker, kinds, 10, lease)
        .await
        .iter()
        .map(|t| t.id)
        .collect()
}

/// A keyed task learns that a newer one with its key is waiting (a newer message in the
/// same conversation), and only then.
pub async fn newer_keyed_tasks_are_seen(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let a1 = keyed(store.as_ref(), 1, "conv-a").await;
    let b1 = keyed(store.as_ref(), 2, "conv-b").await;
    assert_eq!(
        claimed_ids(store.as_ref(), "w", &k, LEASE).await,
        vec![a1, b1]
    );
    assert!(!store.queued_after("conv-a", a1).await.expect("query"));
    let a2 = keyed(store.as_ref(), 3, "conv-a").await;
    assert!(store.queued_after("conv-a", a1).await.expect("query"));
    assert!(
        !store.queued_after("conv-b", b1).await.expect("query"),
        "other keys do not count"
    );
    assert!(
        !store.queued_after("conv-a", a2).await.expect("query"),
        "only newer ones count"
    );
    // Once claimed, the newer task is no longer waiting.
    store.complete("w", &[a1]).await.expect("complete");
    assert_eq!(claimed_ids(store.as_ref(), "w", &k, LEASE).await, vec![a2]);
    assert!(!store.queued_after("conv-a", a1).await.expect("query"));
}

/// Tasks sharing a concurrency key run one at a time, in order.
pub async fn per_key_serialisation(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let a1 = keyed(store.as_ref(), 1, "conv-a").await;
    let a2 = keyed(store.as_ref(), 2, "conv-a").await;
    let a3 = keyed(store.as_ref(), 3, "conv-a").await;
    let b1 = keyed(store.as_ref(), 4, "conv-b").await;
    let free = store.enqueue(&task("noop", 5)).await.expect("enqueue").id();

    let got = claimed_ids(store.as_ref(), "w1", &k, LEASE).await;
    assert_eq!(got.len(), 3, "one per key plus the unkeyed task: {got:?}");
    assert!(got.contains(&a1) && got.contains(&b1) && got.contains(&free));
    assert!(
        claim(store.as_ref(), "w2", &k, 10, LEASE).await.is_empty(),
        "keys held by running tasks block other workers"
    );
    store.complete("w1", &[a1]).await.expect("complete");
    let got = claimed_ids(store.as_ref(), "w2", &k, LEASE).await;
    assert_eq!(got, vec![a2], "next task of the key, in order");
    // A failure (retry) and a release also free the key.
    let f = Failure {
        id: a2,
        attempt: 1,
        error: "x".into(),
        retry_at: Some(flowbot_core::clock::now()),
    };
    store.fail("w2", &f).await.expect("fail");
    let got = claimed_ids(store.as_ref(), "w3", &k, LEASE).await;
    assert_eq!(got, vec![a2], "the retried task keeps its place before a3");
    assert_eq!(store.release("w3", &[a2]).await.expect("release"), 1);
    let got = claim(store.as_ref(), "w4", &k, 10, LEASE).await;
    assert_eq!(got.iter().map(|t| t.id).collect::<Vec<_>>(), vec![a2]);
    assert_eq!(got[0].attempt, 2, "release does not count an attempt");
    store.complete("w4", &[a2]).await.expect("complete");
    let got = claimed_ids(store.as_ref(), "w4", &k, LEASE).await;
    assert_eq!(got, vec![a3]);

    assert_eq!(store.complete("w4", &[a3]).await.expect("complete"), 1);

    // A worker that lost a task (its lease expired and another worker runs it now) and
    // acknowledges it late, together with a task it does hold, frees only its own task's key.
    let c1 = keyed(store.as_ref(), 6, "conv-c").await;
    let c2 = keyed(store.as_ref(), 7, "conv-c").await;
    let short = Duration::from_millis(1);
    assert_eq!(claimed_ids(store.as_ref(), "w5", &k, short).await, [c1]);
    flowbot_core::clock::skip(Duration::from_millis(20));
    assert_eq!(
        store
            .recover_expired(flowbot_core::clock::now(), 5)
            .await
            .expect("recover"),
        1
    );
    assert_eq!(claimed_ids(store.as_ref(), "w6", &k, LEASE).await, [c1]);
    let d1 = keyed(store.as_ref(), 8, "conv-d").await;
    assert_eq!(claimed_ids(store.as_ref(), "w5", &k, LEASE).await, [d1]);
    assert_eq!(
        store.complete("w5", &[c1, d1]).await.expect("complete"),
        1,
        "w5 no longer holds c1"
    );
    assert!(
        claim(store.as_ref(), "w7", &k, 10, LEASE).await.is_empty(),
        "c1 still holds conv-c for w6, so c2 waits"
    );
    assert_eq!(store.complete("w6", &[c1]).await.expect("complete"), 1);
    assert_eq!(claimed_ids(store.as_ref(), "w7", &k, LEASE).await, [c2]);
}

/// Two connections claiming at once never get the same task.
pub async fn concurrent_claims_hand_out_each_task_once(
    store: Arc<dyn Store>,
    other: Arc<dyn Store>,
) {
    let tasks: Vec<NewTask> = (0..400).map(|n| task("noop", n)).collect();
    store.enqueue_batch(&tasks).await.expect("batch");
    let k = Arc::new(kinds(&["noop"]));
    let mut joins = Vec::new();
    for w in 0..8 {
        let s = if w % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let k = k.clone();
        joins.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            loop {
                let got = s
                    .claim(&ClaimRequest {
                        worker: &worker,
                        queue: "default",
                        kinds: &k,
                        limit: 25,
                        lease: LEASE,
                    })
                    .await
                    .expect("claim");
                if got.is_empty() {
                    return mine;
                }
                let ids: Vec<TaskId> = got.iter().map(|t| t.id).collect();
                assert_eq!(
                    s.complete(&worker, &ids).await.expect("complete"),
                    ids.len() as u64
                );
                mine.extend(ids);
            }
        }));
    }
    let mut all = Vec::new();
    for j in joins {
        all.extend(j.await.expect("worker"));
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(n, 400, "every task claimed");
    assert_eq!(all.len(), 400, "no task claimed twice");
}

/// A schedule fires once per fire time however many agents fire it.
pub async fn schedules_fire_once_with_concurrent_workers(
    store: Arc<dyn Store>,
    other: Arc<dyn Store>,
) {
    let def = ScheduleDef::new("every-minute", "* * * * *", "tick", &json!({})).expect("def");
    register_schedule(store.as_ref(), &def)
        .await
        .expect("register");
    let state = store
        .get_schedule("every-minute")
        .await
        .expect("get")
        .expect("exists");
    // Force it due: the fire time is the next minute; pretend "now" is just after it.
    let fire_at = state.next_fire_at;
    let now = fire_at + chrono::Duration::seconds(1);
    let mut joins = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        joins.push(tokio::spawn(async move {
            fire_due(s.as_ref(), now, Duration::from_secs(60))
                .await
                .expect("fire")
        }));
    }
    let mut fired = 0;
    for j in joins {
        fired += j.await.expect("join");
    }
    assert_eq!(fired, 1, "eight agents, one fire");
    let tasks = store
        .list_tasks(&TaskFilter {
            kind: Some("tick".into()),
            limit: 100,
            ..TaskFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(tasks.items.len(), 1);
    assert_eq!(tasks.items[0].run_at, fire_at);
    let state = store
        .get_schedule("every-minute")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(state.next_fire_at, fire_at + chrono::Duration::minutes(1));
    assert_eq!(state.last_fire_at, Some(fire_at));
    // Re-registering the same schedule (a restart) keeps its progress.
    register_schedule(store.as_ref(), &def)
        .await
        .expect("register again");
    let again = store
        .get_schedule("every-minute")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(again.next_fire_at, state.next_fire_at);

    // Pause, list, delete.
    assert!(
        store
            .set_schedule_paused("every-minute", true, flowbot_core::clock::now())
            .await
            .expect("pause")
    );
    let later = now + chrono::Duration::hours(1);
    assert_eq!(
        fire_due(store.as_ref(), later, Duration::from_secs(60))
            .await
            .expect("fire"),
        0,
        "paused"
    );
    assert_eq!(
        store
            .list_schedules(None, 10)
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert!(store.delete_schedule("every-minute").await.expect("delete"));
    assert!(
        store
            .get_schedule("every-minute")
            .await
            .expect("get")
            .is_none()
    );
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, h, m, s)
        .single()
        .expect("valid time")
}

/// Missed fire times are skipped or caught up, as the schedule's misfire policy says.
pub async fn misfire_policies(store: Arc<dyn Store>) {
    for (name, policy, expected) in [
        ("skip", MisfirePolicy::Skip, 1usize),
        ("catch", MisfirePolicy::CatchUp, 11),
    ] {
        let def = ScheduleDef::new(name, "* * * * *", "tick", &json!({ "s": name }))
            .expect("def")
            .misfire(policy);
        // Last fired at 10:00 and then the agents were down for ten and a half minutes.
        store
            .upsert_schedule(&def, at(10, 0, 0))
            .await
            .expect("upsert");
        let fired = fire_due(store.as_ref(), at(10, 10, 30), Duration::from_secs(60))
            .await
            .expect("fire");
        assert_eq!(fired, expected, "{name}");
        let state = store
            .get_schedule(name)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(state.next_fire_at, at(10, 11, 0), "{name}");
        assert_eq!(
            fire_due(store.as_ref(), at(10, 10, 40), Duration::from_secs(60))
                .await
                .expect("fire"),
            0
        );
    }
}

/// Tasks are listed newest first in pages, cancelled while queued, and purged once finished.
pub async fn admin_listing_cancel_and_purge(store: Arc<dyn Store>) {
    let k = kinds(&["noop"]);
    let ids: Vec<TaskId> = store
        .enqueue_batch(&(0..5).map(|n| task("noop", n)).collect::<Vec<_>>())
        .await
        .expect("batch")
        .iter()
        .map(|e| e.id())
        .collect();
    assert!(store.cancel_task(ids[4]).await.expect("cancel"));
    assert!(!store.cancel_task(ids[4]).await.expect("cancel twice"));
    let claimed = claim(store.as_ref(), "w", &k, 2, LEASE).await;
    assert!(
        !store
            .cancel_task(claimed[0].id)
            .await
            .expect("cancel running"),
        "running tasks are not cancelled"
    );
    store
        .complete("w", &[claimed[0].id])
        .await
        .expect("complete");

    let by_state = |state| TaskFilter {
        state: Some(state),
        limit: 100,
        ..TaskFilter::default()
    };
    assert_eq!(
        store
            .list_tasks(&by_state(TaskState::Queued))
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    assert_eq!(
        store
            .list_tasks(&by_state(TaskState::Running))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert_eq!(
        store
            .list_tasks(&by_state(TaskState::Done))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert_eq!(
        store
            .list_tasks(&by_state(TaskState::Cancelled))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    // Newest first, paginated.
    let p1 = store
        .list_tasks(&TaskFilter {
            limit: 3,
            ..TaskFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        p1.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2]]
    );
    let p2 = store
        .list_tasks(&TaskFilter {
            limit: 3,
            cursor: p1.next_cursor.clone(),
            ..TaskFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        p2.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
    assert!(p2.next_cursor.is_none());
    let e = store
        .list_tasks(&TaskFilter {
            cursor: Some("nope".into()),
            limit: 3,
            ..TaskFilter::default()
        })
        .await
        .expect_err("bad cursor");
    assert!(matches!(e, StoreError::Invalid(_)));

    let purged = store
        .purge_finished(flowbot_core::clock::now() + chrono::Duration::seconds(1))
        .await
        .expect("purge");
    assert_eq!(purged, 2, "done and cancelled");
    assert!(store.get_task(ids[4]).await.expect("get").is_none());
}

/// Tasks are counted by state.
pub async fn task_counts(store: Arc<dyn Store>) {
    store
        .enqueue_batch(&(0..3).map(|n| task("noop", n)).collect::<Vec<_>>())
        .await
        .expect("batch");
    let claimed = claim(store.as_ref(), "w", &kinds(&["noop"]), 1, LEASE).await;
    store
        .complete("w", &[claimed[0].id])
        .await
        .expect("complete");
    let mut counts = store.count_tasks().await.expect("counts");
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, vec![(TaskState::Done, 1), (TaskState::Queued, 2)]);
}
