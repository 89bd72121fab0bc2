//! The audit log: batches, newest-first pages, filters, pruning and bad input.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use flowbot_core::store::{AuditEntry, AuditEvent, AuditFilter, AuditOutcome};
use flowbot_core::{Store, StoreError};

/// 2026-03-01 10:00:00 UTC plus `s` seconds.
fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0)
        .single()
        .expect("valid time")
        + Duration::seconds(s)
}

/// A change by `subject` (`None`: a failed authentication) at `t(s)`.
fn event(s: i64, subject: Option<&str>, route: &str, outcome: u16) -> AuditEvent {
    AuditEvent {
        at: t(s),
        subject: subject.map(str::to_owned),
        role: subject.map(|_| "admin".to_owned()),
        method: "PUT".into(),
        route: route.into(),
        path: route.replace("{name}", &format!("r{s}")),
        resource: subject.map(|_| format!("rule:r{s}")),
        outcome,
        request_id: format!("req-{s}-{outcome}"),
        client: Some("127.0.0.1".into()),
        detail: None,
    }
}

/// Every entry matching `filter`, page by page (`per_page` at a time), checking that each
/// page but the last is full.
async fn all(store: &dyn Store, filter: &AuditFilter, per_page: u32) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_audit(filter, cursor.as_deref(), per_page)
            .await
            .expect("list audit");
        match page.next_cursor {
            Some(next) => {
                assert_eq!(
                    page.items.len(),
                    per_page as usize,
                    "a page before the last is full"
                );
                out.extend(page.items);
                cursor = Some(next);
            }
            None => {
                out.extend(page.items);
                return out;
            }
        }
    }
}

/// The request ids of `entries`, in order.
fn ids(entries: &[AuditEntry]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e.event.request_id.as_str())
        .collect()
}

/// Audit entries recorded in batches are listed newest first, page by page, with a cursor.
pub async fn audit_batches_list_newest_first_in_pages(store: Arc<dyn Store>) {
    store.record_audit(&[]).await.expect("an empty batch");
    // 23 events, out of time order, two pairs sharing a millisecond (their ids break the tie).
    let mut batch: Vec<AuditEvent> = (0..21)
        .map(|s| event((s * 8) % 21, Some("ada"), "/api/v1/rules/{name}", 200))
        .collect();
    batch.push(event(5, None, "/api/v1/rules/{name}", 401));
    batch.push(event(5, Some("bob"), "/api/v1/rules/{name}", 204));
    let mut long = event(30, Some("ada"), "/api/v1/workflows/{name}", 200);
    long.detail = Some("é✓ ".repeat(1_700)); // over 10 KB
    long.path = format!("/api/v1/workflows/{}", "w".repeat(2_000));
    batch.push(long.clone());
    store.record_audit(&batch).await.expect("record");

    for per_page in [1, 4, 7, 24, 1000] {
        let listed = all(store.as_ref(), &AuditFilter::default(), per_page).await;
        assert_eq!(listed.len(), batch.len(), "{per_page} a page: no gaps");
        let unique: HashSet<i64> = listed.iter().map(|e| e.id).collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{per_page} a page: no duplicates"
        );
        for w in listed.windows(2) {
            assert!(
                (w[0].event.at, w[0].id) > (w[1].event.at, w[1].id),
                "newest first, then the later id: {:?} before {:?}",
                (w[0].event.at, w[0].id),
                (w[1].event.at, w[1].id)
            );
        }
        // Each entry is the event as recorded.
        let mut stored: Vec<AuditEvent> = listed.iter().map(|e| e.event.clone()).collect();
        let mut recorded = batch.clone();
        for v in [&mut stored, &mut recorded] {
            v.sort_by(|a, b| (a.at, &a.request_id).cmp(&(b.at, &b.request_id)));
        }
        assert_eq!(stored, recorded);
    }
    let newest = store
        .list_audit(&AuditFilter::default(), None, 1)
        .await
        .expect("list");
    assert_eq!(newest.items[0].event, long, "the long event round-trips");
    // Events sharing a time are listed in reverse insertion order.
    let at5: Vec<AuditEntry> = all(store.as_ref(), &AuditFilter::default(), 50)
        .await
        .into_iter()
        .filter(|e| e.event.at == t(5))
        .collect();
    assert_eq!(ids(&at5), vec!["req-5-204", "req-5-401", "req-5-200"]);

    // A batch is one transaction: an invalid event stores none of it, and says which.
    let mut nul = event(40, Some("eve"), "/api/v1/kv", 200);
    nul.detail = Some("a\0b".into());
    let e = store
        .record_audit(&[event(41, Some("eve"), "/api/v1/kv", 200), nul])
        .await
        .expect_err("a NUL character");
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("event 1") && m.contains("detail")),
        "{e}"
    );
    let e = store
        .record_audit(&[event(42, Some("eve"), "/api/v1/kv", 42)])
        .await
        .expect_err("not an HTTP status");
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("outcome 42")),
        "{e}"
    );
    let eve = AuditFilter {
        subject: Some("eve".into()),
        ..AuditFilter::default()
    };
    assert!(
        all(store.as_ref(), &eve, 10).await.is_empty(),
        "nothing of a refused batch is stored"
    );
}

/// Audit listings filter by subject, outcome, time and route prefix.
pub async fn audit_filters(store: Arc<dyn Store>) {
    let batch = vec![
        event(1, Some("ada"), "/api/v1/rules/{name}", 200),
        event(2, None, "/api/v1/rules/{name}", 401),
        event(3, Some("bob"), "/api/v1/rules/{name}", 403),
        event(4, Some("ada"), "/api/v1/workflows/{name}", 201),
        event(5, None, "/api/v1/workflows/{name}", 401),
        event(6, Some("bob"), "/api/v1/kv/{name}", 500),
        event(7, Some("ada"), "/api/v1/rules_old/{name}", 204),
        event(8, Some("ada"), "/api/v1/ru%es/{name}", 404),
    ];
    store.record_audit(&batch).await.expect("record");
    let list = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            let entries = all(store.as_ref(), &filter, 2).await;
            entries
                .iter()
                .map(|e| e.event.at)
                .map(|at| (at - t(0)).num_seconds())
                .collect::<Vec<i64>>()
        }
    };
    assert_eq!(
        list(AuditFilter::default()).await,
        vec![8, 7, 6, 5, 4, 3, 2, 1]
    );
    assert_eq!(
        list(AuditFilter {
            subject: Some("ada".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![8, 7, 4, 1]
    );
    assert_eq!(
        list(AuditFilter {
            outcome: Some(AuditOutcome::Class(4)),
            ..AuditFilter::default()
        })
        .await,
        vec![8, 5, 3, 2]
    );
    assert_eq!(
        list(AuditFilter {
            outcome: Some(AuditOutcome::Class(2)),
            ..AuditFilter::default()
        })
        .await,
        vec![7, 4, 1]
    );
    assert_eq!(
        list(AuditFilter {
            outcome: Some(AuditOutcome::Status(401)),
            ..AuditFilter::default()
        })
        .await,
        vec![5, 2]
    );
    // `since` is inclusive, `until` exclusive.
    assert_eq!(
        list(AuditFilter {
            since: Some(t(3)),
            until: Some(t(6)),
            ..AuditFilter::default()
        })
        .await,
        vec![5, 4, 3]
    );
    assert_eq!(
        list(AuditFilter {
            since: Some(t(7)),
            ..AuditFilter::default()
        })
        .await,
        vec![8, 7]
    );
    assert_eq!(
        list(AuditFilter {
            until: Some(t(2)),
            ..AuditFilter::default()
        })
        .await,
        vec![1]
    );
    // A prefix of the route template, taken literally (no wildcards).
    assert_eq!(
        list(AuditFilter {
            route_prefix: Some("/api/v1/rules".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![7, 3, 2, 1]
    );
    assert_eq!(
        list(AuditFilter {
            route_prefix: Some("/api/v1/rules/".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![3, 2, 1]
    );
    assert_eq!(
        list(AuditFilter {
            route_prefix: Some("/api/v1/ru%".into()),
            ..AuditFilter::default()
        })
        .await,
        vec![8]
    );
    assert_eq!(
        list(AuditFilter {
            route_prefix: Some("/api/v1/ru_es".into()),
            ..AuditFilter::default()
        })
        .await,
        Vec::<i64>::new()
    );
    // Filters together.
    assert_eq!(
        list(AuditFilter {
            subject: Some("ada".into()),
            outcome: Some(AuditOutcome::Class(2)),
            since: Some(t(2)),
            until: Some(t(100)),
            route_prefix: Some("/api/v1/".into()),
        })
        .await,
        vec![7, 4]
    );
    // A filter out of range is refused.
    for outcome in [
        AuditOutcome::Class(6),
        AuditOutcome::Class(0),
        AuditOutcome::Status(99),
        AuditOutcome::Status(600),
    ] {
        let e = store
            .list_audit(
                &AuditFilter {
                    outcome: Some(outcome),
                    ..AuditFilter::default()
                },
                None,
                10,
            )
            .await
            .expect_err("out of range");
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("outcome")),
            "{e}"
        );
    }
}

/// Pruning the audit log removes exactly the entries older than the cut-off.
pub async fn audit_prune_removes_the_older_ones(store: Arc<dyn Store>) {
    // More old entries than one prune batch holds, so pruning takes several.
    let old: Vec<AuditEvent> = (0..2_500)
        .map(|i| event(-10_000 + i, Some("ada"), "/api/v1/rules/{name}", 200))
        .collect();
    store.record_audit(&old).await.expect("record old");
    let kept = vec![
        event(0, Some("ada"), "/api/v1/rules/{name}", 200),
        event(1, None, "/api/v1/rules/{name}", 401),
        event(2, Some("bob"), "/api/v1/kv/{name}", 204),
    ];
    store.record_audit(&kept).await.expect("record new");
    let mut just_before = event(0, Some("ada"), "/api/v1/rules/{name}", 200);
    just_before.at = t(0) - Duration::milliseconds(1);
    just_before.request_id = "just-before".into();
    store.record_audit(&[just_before]).await.expect("record");

    assert_eq!(
        store.prune_audit(t(0)).await.expect("prune"),
        2_501,
        "entries before t(0)"
    );
    let left = all(store.as_ref(), &AuditFilter::default(), 100).await;
    assert_eq!(
        ids(&left),
        vec!["req-2-204", "req-1-401", "req-0-200"],
        "an entry at the limit is kept"
    );
    assert_eq!(store.prune_audit(t(0)).await.expect("prune again"), 0);
    assert_eq!(
        store.prune_audit(t(-100_000)).await.expect("prune nothing"),
        0
    );
    assert_eq!(store.prune_audit(t(1)).await.expect("prune one"), 1);
    assert_eq!(
        ids(&all(store.as_ref(), &AuditFilter::default(), 100).await),
        vec!["req-2-204", "req-1-401"]
    );
}

/// A malformed audit cursor is an `Invalid` error, not an empty page.
pub async fn audit_bad_cursors_are_errors(store: Arc<dyn Store>) {
    store
        .record_audit(&[
            event(1, Some("ada"), "/api/v1/rules/{name}", 200),
            event(2, Some("ada"), "/api/v1/rules/{name}", 200),
        ])
        .await
        .expect("record");
    let good = store
        .list_audit(&AuditFilter::default(), None, 1)
        .await
        .expect("list")
        .next_cursor
        .expect("a second page");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let bad = [
        "nope".to_owned(),
        String::new(),
        "zz".into(),
        format!("{good}0"),
        good[..good.len() - 2].to_owned(),
        hex("17"),
        hex("[1]"),
        hex("[1, \"2\"]"),
        hex("[1, 2, 3]"),
        hex("{\"at\": 1, \"id\": 2}"),
        hex("[1.5, 2]"),
        "ab".repeat(5_000),
        "é".repeat(10),
    ];
    for c in &bad {
        let e = store
            .list_audit(&AuditFilter::default(), Some(c), 10)
            .await
            .expect_err("a bad cursor");
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("malformed cursor")),
            "{c:?}: {e}"
        );
    }
    let second = store
        .list_audit(&AuditFilter::default(), Some(&good), 10)
        .await
        .expect("the good cursor still works");
    assert_eq!(ids(&second.items), vec!["req-1-200"]);
}

/// Two processes pruning at once remove each entry once between them.
pub async fn concurrent_audit_prunes_count_each_entry_once(
    store: Arc<dyn Store>,
    other: Arc<dyn Store>,
) {
    let old: Vec<AuditEvent> = (0..3_000)
        .map(|i| event(-10_000 + i, Some("ada"), "/api/v1/rules/{name}", 200))
        .collect();
    store.record_audit(&old).await.expect("record");
    store
        .record_audit(&[event(0, Some("ada"), "/api/v1/rules/{name}", 200)])
        .await
        .expect("record");
    let (a, b) = tokio::join!(store.prune_audit(t(0)), other.prune_audit(t(0)));
    assert_eq!(a.expect("prune") + b.expect("prune"), 3_000);
    assert_eq!(
        ids(&all(store.as_ref(), &AuditFilter::default(), 10).await),
        vec!["req-0-200"]
    );
}
