//! Leases: one holder at a time, fencing tokens, expiry, and `hold` moving work to another
//! process when its holder dies.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use flowbot_core::lease::{LeaseTiming, hold};
use flowbot_core::{CancellationToken, Store};

/// A lease has one holder at a time, a fencing token that grows with each new holder, and expires.
pub async fn leases_hold_fence_and_expire(store: Arc<dyn Store>) {
    let day = Duration::from_secs(86_400);
    let a = store
        .acquire_lease("poll:tg", "p1", day)
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        store
            .acquire_lease("poll:tg", "p2", day)
            .await
            .expect("try"),
        None
    );
    let again = store
        .acquire_lease("poll:tg", "p1", day)
        .await
        .expect("re-acquire")
        .expect("its own");
    assert_eq!(again.token, a.token, "the holder renewing keeps its token");
    assert!(store.renew_lease(&a, day).await.expect("renew"));
    let mut forged = a.clone();
    forged.token += 7;
    assert!(!store.renew_lease(&forged, day).await.expect("renew"));

    store.release_lease(&a).await.expect("release");
    let b = store
        .acquire_lease("poll:tg", "p2", day)
        .await
        .expect("acquire")
        .expect("released");
    assert!(b.token > a.token, "a new holder gets a larger token");
    assert!(
        !store.renew_lease(&a, day).await.expect("renew"),
        "the old holder lost it"
    );
    store.release_lease(&a).await.expect("a stale release");
    assert_eq!(
        store
            .acquire_lease("poll:tg", "p3", day)
            .await
            .expect("try"),
        None,
        "a stale release does not free someone else's lease"
    );

    // Expiry: a lease nobody renews is free after its ttl.
    let short = store
        .acquire_lease("shard:0", "p1", Duration::from_millis(150))
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(
        store
            .acquire_lease("shard:0", "p2", day)
            .await
            .expect("try"),
        None
    );
    // Past its ttl on FlowBot's clock, which the store reads.
    flowbot_core::clock::skip(Duration::from_millis(300));
    let taken = store
        .acquire_lease("shard:0", "p2", day)
        .await
        .expect("acquire")
        .expect("expired");
    assert!(taken.token > short.token);
    assert!(!store.renew_lease(&short, day).await.expect("renew"));
}

/// `hold` moves the work to another process soon after the lease holder dies.
pub async fn a_lease_moves_when_its_holder_dies(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    // Racing processes: exactly one wins.
    let mut racers = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        racers.push(tokio::spawn(async move {
            store
                .acquire_lease("race", &format!("p{i}"), Duration::from_secs(60))
                .await
                .expect("acquire")
                .is_some()
        }));
    }
    let mut winners = 0;
    for r in racers {
        winners += u32::from(r.await.expect("racer"));
    }
    assert_eq!(winners, 1);

    // Work under `hold` in two processes: never both at once; when the holder dies without
    // releasing, the other takes over within ttl + every.
    let timing = LeaseTiming {
        ttl: Duration::from_millis(600),
        every: Duration::from_millis(150),
    };
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let who = Arc::new(AtomicI64::new(0));
    let start = |store: Arc<dyn Store>, id: i64| {
        let (running, most, who) = (running.clone(), most.clone(), who.clone());
        tokio::spawn(async move {
            hold(
                &*store,
                "conn",
                &format!("process-{id}"),
                timing,
                CancellationToken::new(),
                move |stop| {
                    let (running, most, who) = (running.clone(), most.clone(), who.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        who.store(id, Ordering::SeqCst);
                        stop.cancelled().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                },
            )
            .await;
        })
    };
    let one = start(first.clone(), 1);
    super::eventually(
        "the first process holds the lease",
        Duration::from_secs(5),
        || {
            let who = who.clone();
            async move { who.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    let two = start(second.clone(), 2);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        who.load(Ordering::SeqCst),
        1,
        "the holder keeps it while alive"
    );
    // The holder dies: no release, its renewals stop, its work stops.
    one.abort();
    let died = tokio::time::Instant::now();
    super::eventually(
        "the second process takes over",
        Duration::from_secs(5),
        || {
            let who = who.clone();
            async move { who.load(Ordering::SeqCst) == 2 }
        },
    )
    .await;
    assert!(
        died.elapsed() < timing.ttl + timing.every + Duration::from_millis(500),
        "taken over in {:?}",
        died.elapsed()
    );
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two holders at once");
    two.abort();
}
