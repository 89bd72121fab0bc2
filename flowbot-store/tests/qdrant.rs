//! The Qdrant backend (`flowbot_store::qdrant::QdrantVectors`) over the real `qdrant-client`
//! and the real gRPC wire.
//!
//! Every test runs against the PROTOCOL FAKE `flowbot_store::qdrant::fake` (an in-memory server of the
//! subset of Qdrant's gRPC protocol the backend uses — NOT Qdrant), and again against a real
//! Qdrant when `QDRANT_URL` is set (e.g. `http://127.0.0.1:6334`, with `QDRANT_API_KEY` if it
//! wants one). Without it each test prints
//! `SKIPPED: QDRANT_URL not set — ran against the protocol fake only`.
//!
//! The vector conformance suite (`flowbot_store::vector_conformance_tests!`) runs twice:
//! `conformance_on_protocol_fake::*` and `conformance_on_real_qdrant::*` (skipped without
//! `QDRANT_URL`).
#![cfg(feature = "qdrant")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    missing_docs,
    unreachable_pub
)]

use flowbot_store::qdrant::fake as qdrant_fake;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use flowbot_core::vector::{
    CollectionInfo, CollectionSpec, Condition, Distance, Filter, Hit, Point, TextQuery,
    VectorError, VectorQuery, VectorStore, check_collection_name,
};
use flowbot_store::conformance::vectors::VectorBackend;
use flowbot_store::qdrant::{ID_KEY, QdrantVectors, point_uuid};
use serde_json::{Value, json};

/// Runs `scenario` against the PROTOCOL FAKE, then against the real Qdrant at `QDRANT_URL`
/// when it is set. The scenario gets a store and a prefix for its collection names.
async fn on_fake_and_real<F, Fut>(test: &str, scenario: F)
where
    F: Fn(QdrantVectors, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = qdrant_fake::start().await.expect("start the PROTOCOL FAKE");
    let store = QdrantVectors::connect(&url, None)
        .await
        .expect("connect to the PROTOCOL FAKE");
    scenario(store, format!("{test}-")).await;
    match real_qdrant() {
        Some((url, key)) => {
            let store = QdrantVectors::connect(&url, key)
                .await
                .expect("connect to the real Qdrant at QDRANT_URL");
            // Unique names, so runs against a shared server do not meet.
            let prefix = format!("fbt-{test}-{}-", unique());
            scenario(store.clone(), prefix.clone()).await;
            for c in store.collections().await.unwrap() {
                if c.spec.name.starts_with(&prefix) {
                    store.delete_collection(&c.spec.name).await.unwrap();
                }
            }
            eprintln!("{test}: ran against the PROTOCOL FAKE and the real Qdrant at {url}");
        }
        None => {
            eprintln!("SKIPPED: QDRANT_URL not set — ran against the protocol fake only ({test})")
        }
    }
}

/// The real Qdrant's URL and API key, from `QDRANT_URL` and `QDRANT_API_KEY`.
fn real_qdrant() -> Option<(String, Option<String>)> {
    let url = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty())?;
    let key = std::env::var("QDRANT_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    Some((url, key))
}

/// A name part no other test of any run shares: the process, the time and a counter.
fn unique() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    format!(
        "{}-{secs}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn point(id: &str, vector: Vec<f32>, payload: Value) -> Point {
    let Value::Object(payload) = payload else {
        panic!("payload must be an object");
    };
    Point {
        id: id.into(),
        vector,
        payload,
    }
}

fn ids<T: AsRef<str>>(xs: &[T]) -> Vec<String> {
    xs.iter().map(|x| x.as_ref().to_owned()).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

async fn hit_ids(store: &QdrantVectors, c: &str, q: &VectorQuery) -> Vec<String> {
    store
        .search(c, q)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

#[tokio::test]
async fn protocol_fake_round_trip_of_every_call() {
    on_fake_and_real("round-trip", |store, p| async move {
        let name = format!("{p}docs");
        assert_eq!(store.backend(), "qdrant");
        assert!(store.collection(&name).await.unwrap().is_none());
        let spec = CollectionSpec::new(&name, 3, Distance::Cosine);
        store.create_collection(&spec).await.unwrap();
        let info = store.collection(&name).await.unwrap().unwrap();
        assert_eq!((info.spec.clone(), info.points), (spec.clone(), 0));
        assert!(store.collections().await.unwrap().contains(&info));

        let points = vec![
            point(
                "a",
                vec![1.0, 2.0, 3.0],
                json!({"text": "alpha", "page": 1, "f": 0.5}),
            ),
            point(
                "b",
                vec![0.0, 1.0, 0.0],
                json!({"text": "beta", "tags": ["x", "y"]}),
            ),
            point(
                "c",
                vec![-1.0, 0.5, 0.25],
                json!({"nested": {"k": [true, null]}}),
            ),
        ];
        store.upsert(&name, &points).await.unwrap();
        store.upsert(&name, &[]).await.unwrap();
        assert_eq!(store.collection(&name).await.unwrap().unwrap().points, 3);
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 3);

        // In the order asked, missing ids left out, payloads as written (no backend keys),
        // cosine vectors scaled back to what was stored.
        let got = store.get(&name, &ids(&["c", "zzz", "a"])).await.unwrap();
        assert_eq!(got.len(), 2);
        for (got, want) in got.iter().zip([&points[2], &points[0]]) {
            assert_eq!(got.id, want.id);
            assert_eq!(got.payload, want.payload);
            assert!(close(&got.vector, &want.vector), "{got:?} vs {want:?}");
        }

        // Upsert replaces.
        store
            .upsert(&name, &[point("b", vec![0.0, 0.0, 1.0], json!({"v": 2}))])
            .await
            .unwrap();
        let b = store.get(&name, &ids(&["b"])).await.unwrap();
        assert_eq!(b[0].payload, *json!({"v": 2}).as_object().unwrap());
        assert!(close(&b[0].vector, &[0.0, 0.0, 1.0]));
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 3);

        let hits = store
            .search(&name, &VectorQuery::new(vec![0.0, 0.1, 1.0], 2))
            .await
            .unwrap();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].id, "b");
        assert!(hits[0].score >= hits[1].score);
        assert!(!hits[0].payload.contains_key(ID_KEY));

        // Keyword search is not offered.
        let text = TextQuery {
            text: "alpha".into(),
            limit: 5,
            filter: Filter::all(),
        };
        assert!(store.search_text(&name, &text).await.unwrap().is_none());

        assert_eq!(
            store
                .delete(&name, &ids(&["a", "a", "nope"]))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.delete(&name, &ids(&["a"])).await.unwrap(), 0);
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 2);
        assert!(store.delete_collection(&name).await.unwrap());
        assert!(!store.delete_collection(&name).await.unwrap());
        assert!(store.collection(&name).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_string_ids_map_to_uuids_and_back() {
    on_fake_and_real("ids", |store, p| async move {
        let name = format!("{p}ids");
        store
            .create_collection(&CollectionSpec::new(&name, 2, Distance::Dot))
            .await
            .unwrap();
        let long = "x".repeat(256);
        let odd = [
            "doc/1.md#chunk 0",
            "ünïcødé 🦀",
            "42",
            long.as_str(),
            "550e8400-e29b-41d4-a716-446655440000",
        ];
        let points: Vec<Point> = odd
            .iter()
            .enumerate()
            .map(|(i, id)| point(id, vec![1.0, i as f32], json!({"i": i})))
            .collect();
        store.upsert(&name, &points).await.unwrap();
        let got = store.get(&name, &ids(&odd)).await.unwrap();
        assert_eq!(got.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), odd);
        for p in &got {
            assert!(!p.payload.contains_key(ID_KEY));
        }
        let mut found = hit_ids(&store, &name, &VectorQuery::new(vec![0.0, 1.0], 10)).await;
        found.sort();
        let mut want = ids(&odd);
        want.sort();
        assert_eq!(found, want);
        // Deterministic UUID v5, one per id.
        assert_eq!(point_uuid("42"), point_uuid("42"));
        assert_ne!(point_uuid("42"), point_uuid("43"));

        // Reserved payload keys and bad ids are refused, and nothing of the batch is written.
        let reserved = point("r", vec![1.0, 1.0], json!({ID_KEY: "other"}));
        let err = store
            .upsert(&name, &[point("ok", vec![1.0, 1.0], json!({})), reserved])
            .await;
        assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
        let err = store
            .upsert(&name, &[point("", vec![1.0, 1.0], json!({}))])
            .await;
        assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
        assert!(store.get(&name, &ids(&["ok"])).await.unwrap().is_empty());
    })
    .await;
}

fn library() -> Vec<Point> {
    vec![
        point(
            "a",
            vec![1.0, 0.0],
            json!({"source": "a.md", "page": 1, "tags": ["x", "y"], "draft": false}),
        ),
        point(
            "b",
            vec![0.9, 0.1],
            json!({"source": "b.md", "page": 2, "tags": ["y"], "draft": true}),
        ),
        point(
            "c",
            vec![0.8, 0.2],
            json!({"source": "a.md", "page": 3, "tags": [], "draft": false}),
        ),
        point(
            "d",
            vec![0.7, 0.3],
            json!({"source": "c.md", "page": "3", "tags": "z"}),
        ),
        point("e", vec![0.6, 0.4], json!({"other": 1})),
    ]
}

#[tokio::test]
async fn protocol_fake_filters_match_like_core() {
    on_fake_and_real("filters", |store, p| async move {
        let name = format!("{p}filters");
        store
            .create_collection(&CollectionSpec::new(&name, 2, Distance::Cosine))
            .await
            .unwrap();
        let points = library();
        store.upsert(&name, &points).await.unwrap();
        let not = |c: Condition| Filter {
            must: vec![],
            must_not: vec![c],
        };
        let filters = vec![
            Filter::must(Condition::eq("source", "a.md")),
            Filter::must(Condition::eq("page", 3)),
            Filter::must(Condition::eq("page", "3")),
            Filter::must(Condition::eq("tags", "y")),
            Filter::must(Condition::eq("tags", "z")),
            Filter::must(Condition::eq("draft", true)),
            Filter::must(Condition::any("source", [json!("b.md"), json!("c.md")])),
            Filter::must(Condition::any("page", [json!(1), json!(2)])),
            Filter::must(Condition::any("page", [json!(1), json!("3")])),
            Filter::must(Condition::any("tags", [json!("x"), json!("z")])),
            Filter::must(Condition::any("draft", [json!(true), json!(false)])),
            Filter::must(Condition::eq("missing", 1)),
            not(Condition::eq("draft", false)),
            not(Condition::any("tags", [json!("y")])),
            Filter {
                must: vec![
                    Condition::eq("source", "a.md"),
                    Condition::eq("draft", false),
                ],
                must_not: vec![Condition::eq("page", 1)],
            },
        ];
        for f in &filters {
            let mut want: Vec<String> = points
                .iter()
                .filter(|p| f.test(&p.payload))
                .map(|p| p.id.clone())
                .collect();
            want.sort();
            assert_eq!(
                store.count(&name, f).await.unwrap(),
                want.len() as u64,
                "count {f:?}"
            );
            let mut q = VectorQuery::new(vec![1.0, 0.0], 10);
            q.filter = f.clone();
            let mut got = hit_ids(&store, &name, &q).await;
            got.sort();
            assert_eq!(got, want, "search {f:?}");
        }
        // Floats and empty lists are refused.
        for bad in [
            Filter::must(Condition::eq("page", 1.5)),
            Filter::must(Condition::any("page", [])),
        ] {
            let err = store.count(&name, &bad).await;
            assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_delete_where_refuses_the_empty_filter() {
    on_fake_and_real("delete-where", |store, p| async move {
        let name = format!("{p}dw");
        store
            .create_collection(&CollectionSpec::new(&name, 2, Distance::Cosine))
            .await
            .unwrap();
        store.upsert(&name, &library()).await.unwrap();
        let err = store.delete_where(&name, &Filter::all()).await;
        assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 5);
        let f = Filter::must(Condition::any("tags", [json!("y"), json!("z")]));
        assert_eq!(store.delete_where(&name, &f).await.unwrap(), 3);
        assert_eq!(store.delete_where(&name, &f).await.unwrap(), 0);
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 2);
        let left = store
            .get(&name, &ids(&["a", "b", "c", "d", "e"]))
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["c", "e"]
        );
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_scores_and_thresholds_per_distance() {
    on_fake_and_real("scores", |store, p| async move {
        let vectors = [
            ("near", vec![1.0, 0.0]),
            ("mid", vec![0.6, 0.8]),
            ("far", vec![-1.0, 0.0]),
        ];
        let query = vec![2.0, 0.0];
        for distance in [Distance::Cosine, Distance::Dot, Distance::Euclid] {
            let name = format!("{p}{}", distance.as_str());
            store
                .create_collection(&CollectionSpec::new(&name, 2, distance))
                .await
                .unwrap();
            let points: Vec<Point> = vectors
                .iter()
                .map(|(id, v)| point(id, v.clone(), json!({})))
                .collect();
            store.upsert(&name, &points).await.unwrap();
            let hits = store
                .search(&name, &VectorQuery::new(query.clone(), 10))
                .await
                .unwrap();
            assert_eq!(
                hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
                ["near", "mid", "far"],
                "{distance:?}"
            );
            // Core's scores: higher is closer, euclid negated.
            for (hit, (_, v)) in hits.iter().zip(&vectors) {
                let want = distance.score(&query, v);
                assert!(
                    (hit.score - want).abs() < 1e-5,
                    "{distance:?}: {} vs {want}",
                    hit.score
                );
            }
            // A threshold keeps the hits scoring at least it.
            let mut q = VectorQuery::new(query.clone(), 10);
            q.threshold = Some((hits[1].score + hits[2].score) / 2.0);
            assert_eq!(
                hit_ids(&store, &name, &q).await,
                ["near", "mid"],
                "{distance:?}"
            );
            q.threshold = Some((hits[0].score + hits[1].score) / 2.0);
            assert_eq!(hit_ids(&store, &name, &q).await, ["near"], "{distance:?}");
            q.threshold = Some(hits[0].score + 1.0);
            assert!(hit_ids(&store, &name, &q).await.is_empty(), "{distance:?}");
            // The limit.
            assert_eq!(
                hit_ids(&store, &name, &VectorQuery::new(query.clone(), 1)).await,
                ["near"]
            );
        }
        // Euclid: the threshold -1.5 keeps distances up to 1.5.
        let name = format!("{p}euclid");
        let mut q = VectorQuery::new(vec![1.0, 0.0], 10);
        q.threshold = Some(-1.5);
        assert_eq!(hit_ids(&store, &name, &q).await, ["near", "mid"]);
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_dimension_mismatch_and_bad_input() {
    on_fake_and_real("dims", |store, p| async move {
        let name = format!("{p}dims");
        store
            .create_collection(&CollectionSpec::new(&name, 3, Distance::Euclid))
            .await
            .unwrap();
        let good = point("ok", vec![1.0, 2.0, 3.0], json!({}));
        let short = point("short", vec![1.0, 2.0], json!({}));
        let err = store.upsert(&name, &[good.clone(), short]).await;
        assert!(
            matches!(err, Err(VectorError::DimensionMismatch { ref collection, expected: 3, got: 2 }) if *collection == name),
            "{err:?}"
        );
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 0, "all or none");
        let err = store.search(&name, &VectorQuery::new(vec![1.0; 4], 3)).await;
        assert!(
            matches!(err, Err(VectorError::DimensionMismatch { expected: 3, got: 4, .. })),
            "{err:?}"
        );
        let nan = point("nan", vec![f32::NAN, 0.0, 0.0], json!({}));
        assert!(matches!(store.upsert(&name, &[nan]).await, Err(VectorError::Invalid(_))));
        for limit in [0, 1_001] {
            let err = store.search(&name, &VectorQuery::new(vec![1.0; 3], limit)).await;
            assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
        }
        for bad in ["", ".x", "a b", "ü"] {
            let err = store.create_collection(&CollectionSpec::new(bad, 3, Distance::Dot)).await;
            assert!(matches!(err, Err(VectorError::Invalid(_))), "{bad:?}: {err:?}");
        }
        let err = store.create_collection(&CollectionSpec::new(format!("{p}zero"), 0, Distance::Dot)).await;
        assert!(matches!(err, Err(VectorError::Invalid(_))), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_unknown_collection_and_conflict() {
    on_fake_and_real("unknown", |store, p| async move {
        let missing = format!("{p}missing");
        let is_unknown =
            |r: &Result<_, VectorError>| matches!(r, Err(VectorError::UnknownCollection(n)) if *n == missing);
        let pts = [point("a", vec![1.0], json!({}))];
        let f = Filter::must(Condition::eq("k", "v"));
        assert!(is_unknown(&store.upsert(&missing, &pts).await.map(|_| 0)));
        assert!(is_unknown(&store.search(&missing, &VectorQuery::new(vec![1.0], 1)).await.map(|_| 0)));
        assert!(is_unknown(&store.count(&missing, &Filter::all()).await.map(|_| 0)));
        assert!(is_unknown(&store.get(&missing, &ids(&["a"])).await.map(|_| 0)));
        assert!(is_unknown(&store.delete(&missing, &ids(&["a"])).await.map(|_| 0)));
        assert!(is_unknown(&store.delete_where(&missing, &f).await.map(|_| 0)));
        assert!(store.collection(&missing).await.unwrap().is_none());
        assert!(!store.delete_collection(&missing).await.unwrap());

        let name = format!("{p}c");
        let spec = CollectionSpec::new(&name, 4, Distance::Cosine);
        store.create_collection(&spec).await.unwrap();
        store.upsert(&name, &[point("a", vec![1.0; 4], json!({}))]).await.unwrap();
        store.create_collection(&spec).await.unwrap();
        assert_eq!(store.count(&name, &Filter::all()).await.unwrap(), 1, "idempotent, kept");
        for other in [
            CollectionSpec::new(&name, 5, Distance::Cosine),
            CollectionSpec::new(&name, 4, Distance::Dot),
        ] {
            let err = store.create_collection(&other).await;
            assert!(matches!(err, Err(VectorError::Conflict(ref n)) if *n == name), "{err:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn protocol_fake_api_key_is_sent_and_never_shown() {
    let secret = "sekret-key-123";
    let url = qdrant_fake::start_with_key(Some(secret))
        .await
        .expect("start the PROTOCOL FAKE");
    let store = QdrantVectors::connect(&url, Some(secret.into()))
        .await
        .unwrap();
    let shown = format!("{store:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    store
        .create_collection(&CollectionSpec::new("k", 1, Distance::Dot))
        .await
        .unwrap();

    // A wrong key: refused, and the error names neither key.
    let wrong = "wrong-key-456";
    let err = QdrantVectors::connect(&url, Some(wrong.into()))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, VectorError::Unavailable(_)), "{text}");
    assert!(!text.contains(wrong) && !text.contains(secret), "{text}");
    let err = QdrantVectors::connect(&url, None).await.unwrap_err();
    assert!(matches!(err, VectorError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn protocol_fake_unreachable_server_is_unavailable() {
    // A port that was just free: nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let err = QdrantVectors::connect(&format!("http://127.0.0.1:{port}"), Some("k-789".into()))
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, VectorError::Unavailable(_)), "{text}");
    assert!(!text.contains("k-789"), "{text}");
    let err = QdrantVectors::connect("not a url", None).await.unwrap_err();
    assert!(matches!(err, VectorError::Invalid(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// The vector conformance suite (`flowbot_store::conformance::vectors`), on the PROTOCOL
// FAKE and, when QDRANT_URL is set, on the real Qdrant.
// ---------------------------------------------------------------------------------------

/// The conformance suite on the PROTOCOL FAKE: a fresh fake server per test; the second
/// handle is another client connected to the same server.
struct ProtocolFake {
    url: String,
    store: QdrantVectors,
}

impl VectorBackend for ProtocolFake {
    async fn open() -> Option<Self> {
        let url = qdrant_fake::start().await.expect("start the PROTOCOL FAKE");
        let store = QdrantVectors::connect(&url, None)
            .await
            .expect("connect to the PROTOCOL FAKE");
        Some(ProtocolFake { url, store })
    }

    fn vectors(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.store.clone())
    }

    async fn second(&self) -> Option<Arc<dyn VectorStore>> {
        let other = QdrantVectors::connect(&self.url, None)
            .await
            .expect("connect again");
        Some(Arc::new(other))
    }
}

mod conformance_on_protocol_fake {
    flowbot_store::vector_conformance_tests!(super::ProtocolFake);
}

/// The conformance suite on the real Qdrant at `QDRANT_URL` (skipped without it). The suite
/// names its collections plainly (`rt`, `filters`…) and expects a store without others, so
/// each test sees the server through [`Prefixed`]: its collections under a prefix of its
/// own, the others hidden, and nothing left behind.
struct RealQdrant {
    store: Prefixed,
}

impl VectorBackend for RealQdrant {
    async fn open() -> Option<Self> {
        let Some((url, key)) = real_qdrant() else {
            eprintln!(
                "SKIPPED: QDRANT_URL not set — ran against the protocol fake only (conformance)"
            );
            return None;
        };
        let store = QdrantVectors::connect(&url, key)
            .await
            .expect("connect to the real Qdrant at QDRANT_URL");
        let prefix = format!("fbc-{}-", unique());
        Some(RealQdrant {
            store: Prefixed {
                inner: store,
                prefix,
            },
        })
    }

    fn vectors(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.store.clone())
    }

    async fn second(&self) -> Option<Arc<dyn VectorStore>> {
        let (url, key) = real_qdrant()?;
        let inner = QdrantVectors::connect(&url, key)
            .await
            .expect("connect again");
        Some(Arc::new(Prefixed {
            inner,
            prefix: self.store.prefix.clone(),
        }))
    }

    async fn cleanup(self) {
        for c in self.store.collections().await.unwrap() {
            self.store.delete_collection(&c.spec.name).await.unwrap();
        }
    }
}

mod conformance_on_real_qdrant {
    flowbot_store::vector_conformance_tests!(super::RealQdrant);
}

/// A view of a store where collection `x` is `{prefix}x` underneath (test support for a
/// shared real server; names are checked before the prefix is added, and errors name the
/// collection as the caller did).
#[derive(Clone)]
struct Prefixed {
    inner: QdrantVectors,
    prefix: String,
}

impl Prefixed {
    fn name(&self, name: &str) -> Result<String, VectorError> {
        check_collection_name(name)?;
        Ok(format!("{}{name}", self.prefix))
    }

    fn strip(&self, e: VectorError) -> VectorError {
        let strip = |n: String| n.strip_prefix(&self.prefix).map(str::to_owned).unwrap_or(n);
        match e {
            VectorError::UnknownCollection(n) => VectorError::UnknownCollection(strip(n)),
            VectorError::Conflict(n) => VectorError::Conflict(strip(n)),
            VectorError::DimensionMismatch {
                collection,
                expected,
                got,
            } => VectorError::DimensionMismatch {
                collection: strip(collection),
                expected,
                got,
            },
            other => other,
        }
    }

    fn info(&self, mut c: CollectionInfo) -> CollectionInfo {
        c.spec.name = c.spec.name[self.prefix.len()..].to_owned();
        c
    }
}

#[async_trait]
impl VectorStore for Prefixed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        spec.check()?;
        let mut inner = spec.clone();
        inner.name = self.name(&spec.name)?;
        self.inner
            .create_collection(&inner)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError> {
        let found = self.inner.collection(&self.name(name)?).await;
        Ok(found.map_err(|e| self.strip(e))?.map(|c| self.info(c)))
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        Ok(self
            .inner
            .collections()
            .await?
            .into_iter()
            .filter(|c| c.spec.name.starts_with(&self.prefix))
            .map(|c| self.info(c))
            .collect())
    }

    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError> {
        let n = self.name(name)?;
        self.inner
            .delete_collection(&n)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError> {
        let n = self.name(collection)?;
        self.inner
            .upsert(&n, points)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError> {
        let n = self.name(collection)?;
        self.inner.delete(&n, ids).await.map_err(|e| self.strip(e))
    }

    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        let n = self.name(collection)?;
        self.inner
            .delete_where(&n, filter)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        let n = self.name(collection)?;
        self.inner
            .search(&n, query)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        let n = self.name(collection)?;
        self.inner
            .count(&n, filter)
            .await
            .map_err(|e| self.strip(e))
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError> {
        let n = self.name(collection)?;
        self.inner.get(&n, ids).await.map_err(|e| self.strip(e))
    }

    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        let n = self.name(collection)?;
        self.inner
            .search_text(&n, query)
            .await
            .map_err(|e| self.strip(e))
    }
}

/// The wrapper itself, on the PROTOCOL FAKE: names go in prefixed and come back plain.
#[tokio::test]
async fn protocol_fake_prefixed_view_used_for_real_qdrant_conformance() {
    let url = qdrant_fake::start().await.expect("start the PROTOCOL FAKE");
    let inner = QdrantVectors::connect(&url, None).await.unwrap();
    inner
        .create_collection(&CollectionSpec::new("other", 1, Distance::Dot))
        .await
        .unwrap();
    let view = Prefixed {
        inner: inner.clone(),
        prefix: "p1-".into(),
    };
    view.create_collection(&CollectionSpec::new("c", 2, Distance::Dot))
        .await
        .unwrap();
    let names: Vec<String> = view
        .collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.spec.name)
        .collect();
    assert_eq!(names, ["c"]);
    assert!(inner.collection("p1-c").await.unwrap().is_some());
    let err = view
        .search("missing", &VectorQuery::new(vec![1.0], 1))
        .await;
    assert!(
        matches!(err, Err(VectorError::UnknownCollection(ref n)) if n == "missing"),
        "{err:?}"
    );
    let err = view.upsert("c", &[point("a", vec![1.0], json!({}))]).await;
    assert!(
        matches!(err, Err(VectorError::DimensionMismatch { ref collection, .. }) if collection == "c"),
        "{err:?}"
    );
    assert!(matches!(
        view.create_collection(&CollectionSpec::new("", 2, Distance::Dot))
            .await,
        Err(VectorError::Invalid(_))
    ));
}
