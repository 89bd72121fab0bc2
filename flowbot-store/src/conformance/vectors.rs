//! The conformance suite of core's [`VectorStore`]: every behaviour a vector backend must
//! keep, checked against a real one. The embedded backend (memory, SQLite, PostgreSQL) and the
//! Qdrant backend of this crate pass it; a backend of your own proves itself the same way:
//!
//! ```ignore
//! use std::sync::Arc;
//! use flowbot_core::VectorStore;
//! use flowbot_store::conformance::vectors::VectorBackend;
//!
//! struct Mine(MyVectors);
//!
//! impl VectorBackend for Mine {
//!     async fn open() -> Option<Self> {
//!         Some(Mine(MyVectors::connect_to_a_fresh_database().await))
//!     }
//!     fn vectors(&self) -> Arc<dyn VectorStore> {
//!         Arc::new(self.0.clone())
//!     }
//! }
//!
//! flowbot_store::vector_conformance_tests!(Mine);
//! ```
//!
//! Each behaviour uses collections of its own, so one store can run them all.

use std::sync::Arc;

use flowbot_core::VectorError;
use flowbot_core::vector::{
    CollectionSpec, Condition, Distance, Filter, Point, TEXT_KEY, TextQuery, VectorQuery,
    VectorStore,
};
use serde_json::{Map, Value, json};

/// A vector backend under test.
pub trait VectorBackend: Sized + Send + 'static {
    /// A store with no collections; `None` skips the test (say why on stderr, and fail
    /// instead where the backend must be tested).
    fn open() -> impl std::future::Future<Output = Option<Self>> + Send;
    /// The store.
    fn vectors(&self) -> Arc<dyn VectorStore>;
    /// Another handle on the same collections, as another process would open it (`None`:
    /// the backend is not shared between processes).
    fn second(&self) -> impl std::future::Future<Output = Option<Arc<dyn VectorStore>>> + Send {
        async { None }
    }
    /// Remove what the test created.
    fn cleanup(self) -> impl std::future::Future<Output = ()> + Send {
        async {}
    }
}

fn point(id: &str, vector: &[f32], payload: Value) -> Point {
    Point {
        id: id.into(),
        vector: vector.to_vec(),
        payload: match payload {
            Value::Object(map) => map,
            _ => Map::new(),
        },
    }
}

fn ids(hits: &[flowbot_core::vector::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

async fn create(store: &dyn VectorStore, name: &str, dimension: usize, distance: Distance) {
    store
        .create_collection(&CollectionSpec::new(name, dimension, distance))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

/// Collections are created once, listed, described, conflict on another shape, refuse bad
/// names and are deleted with their points.
pub async fn collections_lifecycle(store: &dyn VectorStore) {
    create(store, "life-a", 3, Distance::Cosine).await;
    create(store, "life-a", 3, Distance::Cosine).await;
    let conflict = store
        .create_collection(&CollectionSpec::new("life-a", 4, Distance::Cosine))
        .await;
    assert!(
        matches!(conflict, Err(VectorError::Conflict(_))),
        "{conflict:?}"
    );
    let conflict = store
        .create_collection(&CollectionSpec::new("life-a", 3, Distance::Dot))
        .await;
    assert!(
        matches!(conflict, Err(VectorError::Conflict(_))),
        "{conflict:?}"
    );
    for bad in ["", "a b", "../x"] {
        let refused = store
            .create_collection(&CollectionSpec::new(bad, 3, Distance::Cosine))
            .await;
        assert!(
            matches!(refused, Err(VectorError::Invalid(_))),
            "{bad:?}: {refused:?}"
        );
    }
    let zero = store
        .create_collection(&CollectionSpec::new("life-zero", 0, Distance::Cosine))
        .await;
    assert!(matches!(zero, Err(VectorError::Invalid(_))), "{zero:?}");
    create(store, "life-b", 2, Distance::Euclid).await;
    store
        .upsert("life-b", &[point("p", &[1.0, 2.0], json!({}))])
        .await
        .expect("upsert");
    let info = store
        .collection("life-b")
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(
        info.spec,
        CollectionSpec::new("life-b", 2, Distance::Euclid)
    );
    assert_eq!(info.points, 1);
    let names: Vec<String> = store
        .collections()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.spec.name)
        .filter(|n| n.starts_with("life-"))
        .collect();
    assert_eq!(names, ["life-a", "life-b"]);
    assert!(store.delete_collection("life-b").await.expect("delete"));
    assert!(
        !store
            .delete_collection("life-b")
            .await
            .expect("delete again")
    );
    assert!(
        store
            .collection("life-b")
            .await
            .expect("describe")
            .is_none()
    );
    for result in [
        store
            .upsert("life-b", &[point("p", &[1.0, 2.0], json!({}))])
            .await
            .map(|_| 0),
        store.count("life-b", &Filter::all()).await,
        store
            .search("life-b", &VectorQuery::new(vec![1.0, 2.0], 1))
            .await
            .map(|h| h.len() as u64),
    ] {
        assert!(
            matches!(result, Err(VectorError::UnknownCollection(_))),
            "{result:?}"
        );
    }
    // Created again under the same name, it starts empty.
    create(store, "life-b", 2, Distance::Euclid).await;
    assert_eq!(
        store.count("life-b", &Filter::all()).await.expect("count"),
        0
    );
}

/// Points are written, replaced, read back by id, counted and deleted by id.
pub async fn points_round_trip(store: &dyn VectorStore) {
    create(store, "rt", 3, Distance::Dot).await;
    let a = point(
        "a",
        &[1.0, 0.0, 0.5],
        json!({"source": "x.md", "page": 2, "tags": ["t1"]}),
    );
    let b = point("b", &[0.0, 1.0, 0.0], json!({"source": "y.md"}));
    store
        .upsert("rt", &[a.clone(), b.clone()])
        .await
        .expect("upsert");
    let got = store
        .get("rt", &["b".into(), "missing".into(), "a".into()])
        .await
        .expect("get");
    assert_eq!(got, vec![b.clone(), a.clone()]);
    let a2 = point("a", &[0.0, 0.0, 2.0], json!({"source": "z.md"}));
    store
        .upsert("rt", std::slice::from_ref(&a2))
        .await
        .expect("replace");
    assert_eq!(store.get("rt", &["a".into()]).await.expect("get"), vec![a2]);
    assert_eq!(store.count("rt", &Filter::all()).await.expect("count"), 2);
    // Two points with one id in a call: the last wins.
    let first = point("d", &[1.0, 1.0, 1.0], json!({"v": 1}));
    let last = point("d", &[2.0, 2.0, 2.0], json!({"v": 2}));
    store
        .upsert("rt", &[first, last.clone()])
        .await
        .expect("upsert twice");
    assert_eq!(
        store.get("rt", &["d".into()]).await.expect("get"),
        vec![last]
    );
    let removed = store
        .delete("rt", &["a".into(), "nope".into(), "d".into()])
        .await
        .expect("delete");
    assert_eq!(removed, 2);
    assert_eq!(store.count("rt", &Filter::all()).await.expect("count"), 1);
    assert!(
        store
            .get("rt", &["a".into()])
            .await
            .expect("get")
            .is_empty()
    );
    store
        .upsert("rt", &[])
        .await
        .expect("an empty upsert does nothing");
}

/// Search ranks by each distance with "higher is closer" scores, honours the limit and the
/// threshold.
pub async fn search_ranks_by_distance(store: &dyn VectorStore) {
    let points = [
        point("east", &[1.0, 0.0], json!({})),
        point("north-east", &[0.7, 0.7], json!({})),
        point("north", &[0.0, 1.0], json!({})),
        point("west", &[-2.0, 0.0], json!({})),
    ];
    for (name, distance) in [
        ("rank-cos", Distance::Cosine),
        ("rank-dot", Distance::Dot),
        ("rank-l2", Distance::Euclid),
    ] {
        create(store, name, 2, distance).await;
        store.upsert(name, &points).await.expect("upsert");
        let hits = store
            .search(name, &VectorQuery::new(vec![1.0, 0.1], 3))
            .await
            .expect("search");
        assert_eq!(ids(&hits), ["east", "north-east", "north"], "{distance:?}");
        assert!(
            hits.windows(2).all(|w| w[0].score >= w[1].score),
            "{distance:?}"
        );
        let want = match distance {
            Distance::Cosine => 1.0 / (1.0f32 + 0.01).sqrt(),
            Distance::Dot => 1.0,
            Distance::Euclid => -0.1,
        };
        assert!(
            (hits[0].score - want).abs() < 1e-3,
            "{distance:?}: {}",
            hits[0].score
        );
        let mut query = VectorQuery::new(vec![1.0, 0.1], 4);
        query.threshold = Some(match distance {
            Distance::Cosine => 0.5,
            Distance::Dot => 0.5,
            Distance::Euclid => -1.0,
        });
        let kept = store.search(name, &query).await.expect("threshold");
        assert_eq!(ids(&kept), ["east", "north-east"], "{distance:?}");
    }
    let bad_limit = store
        .search("rank-cos", &VectorQuery::new(vec![1.0, 0.0], 0))
        .await;
    assert!(
        matches!(bad_limit, Err(VectorError::Invalid(_))),
        "{bad_limit:?}"
    );
}

/// Filters keep points by payload: equal strings, integers and booleans, any of a list,
/// elements of an array, and none of the `must_not`.
pub async fn filters_keep_matching_points(store: &dyn VectorStore) {
    create(store, "filters", 2, Distance::Cosine).await;
    let pts: Vec<Point> = (0..40)
        .map(|i| {
            let angle = i as f32 / 40.0;
            point(
                &format!("p{i}"),
                &[angle.cos(), angle.sin()],
                json!({
                    "source": format!("doc{}.md", i % 4),
                    "page": i % 5,
                    "draft": i % 2 == 0,
                    "tags": [format!("t{}", i % 3), "all"],
                }),
            )
        })
        .collect();
    store.upsert("filters", &pts).await.expect("upsert");
    let check = |filter: Filter, expected: Vec<usize>| {
        let pts = &pts;
        async move {
            let mut query = VectorQuery::new(vec![1.0, 0.0], 40);
            query.filter = filter.clone();
            let mut got: Vec<String> = store
                .search("filters", &query)
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.id)
                .collect();
            got.sort();
            let mut want: Vec<String> = expected.iter().map(|i| pts[*i].id.clone()).collect();
            want.sort();
            assert_eq!(got, want, "{filter:?}");
            let count = store.count("filters", &filter).await.expect("count");
            assert_eq!(count, expected.len() as u64, "{filter:?}");
        }
    };
    let all: Vec<usize> = (0..40).collect();
    check(
        Filter::must(Condition::eq("source", "doc1.md")),
        all.iter().copied().filter(|i| i % 4 == 1).collect(),
    )
    .await;
    check(
        Filter::must(Condition::eq("page", 3)),
        all.iter().copied().filter(|i| i % 5 == 3).collect(),
    )
    .await;
    check(
        Filter::must(Condition::eq("draft", true)),
        all.iter().copied().filter(|i| i % 2 == 0).collect(),
    )
    .await;
    check(
        Filter::must(Condition::any("page", [json!(0), json!(4)])),
        all.iter()
            .copied()
            .filter(|i| i % 5 == 0 || i % 5 == 4)
            .collect(),
    )
    .await;
    check(
        Filter::must(Condition::eq("tags", "t2")),
        all.iter().copied().filter(|i| i % 3 == 2).collect(),
    )
    .await;
    check(
        Filter {
            must: vec![Condition::eq("tags", "all")],
            must_not: vec![
                Condition::eq("source", "doc0.md"),
                Condition::eq("draft", true),
            ],
        },
        all.iter()
            .copied()
            .filter(|i| i % 4 != 0 && i % 2 == 1)
            .collect(),
    )
    .await;
    check(Filter::must(Condition::eq("source", "none.md")), vec![]).await;
    let float = store
        .count("filters", &Filter::must(Condition::eq("page", 1.5)))
        .await;
    assert!(matches!(float, Err(VectorError::Invalid(_))), "{float:?}");
}

/// Wrong dimensions and numbers that are not finite are refused by name, and a refused
/// batch writes nothing.
pub async fn bad_vectors_are_refused_whole(store: &dyn VectorStore) {
    create(store, "bad", 3, Distance::Cosine).await;
    let good = point("good", &[1.0, 0.0, 0.0], json!({}));
    let short = point("short", &[1.0, 0.0], json!({}));
    let refused = store.upsert("bad", &[good.clone(), short]).await;
    match refused {
        Err(VectorError::DimensionMismatch {
            expected: 3,
            got: 2,
            collection,
        }) => assert_eq!(collection, "bad"),
        other => panic!("expected a dimension mismatch, got {other:?}"),
    }
    let nan = point("nan", &[f32::NAN, 0.0, 0.0], json!({}));
    let refused = store.upsert("bad", &[good, nan]).await;
    assert!(
        matches!(refused, Err(VectorError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(store.count("bad", &Filter::all()).await.expect("count"), 0);
    let query = store
        .search("bad", &VectorQuery::new(vec![1.0; 4], 1))
        .await;
    assert!(
        matches!(query, Err(VectorError::DimensionMismatch { got: 4, .. })),
        "{query:?}"
    );
}

/// `delete_where` removes the points a filter keeps and refuses to empty a collection.
pub async fn delete_where_removes_matches(store: &dyn VectorStore) {
    create(store, "dw", 2, Distance::Cosine).await;
    let pts: Vec<Point> = (0..10)
        .map(|i| {
            point(
                &format!("c{i}"),
                &[1.0, i as f32],
                json!({"source": if i < 4 { "old.md" } else { "new.md" }, "hash": format!("h{}", i % 2)}),
            )
        })
        .collect();
    store.upsert("dw", &pts).await.expect("upsert");
    let refused = store.delete_where("dw", &Filter::all()).await;
    assert!(
        matches!(refused, Err(VectorError::Invalid(_))),
        "{refused:?}"
    );
    let filter = Filter {
        must: vec![Condition::eq("source", "old.md")],
        must_not: vec![Condition::eq("hash", "h0")],
    };
    assert_eq!(store.delete_where("dw", &filter).await.expect("delete"), 2);
    assert_eq!(store.count("dw", &Filter::all()).await.expect("count"), 8);
    assert_eq!(store.delete_where("dw", &filter).await.expect("again"), 0);
}

/// Approximate search over a few thousand points finds (nearly) what exact search finds.
pub async fn search_agrees_with_brute_force(store: &dyn VectorStore) {
    const DIM: usize = 16;
    create(store, "recall", DIM, Distance::Cosine).await;
    let mut rng = Lcg(42);
    let pts: Vec<Point> = (0..3_000)
        .map(|i| point(&format!("r{i}"), &rng.vector(DIM), json!({"i": i})))
        .collect();
    for batch in pts.chunks(500) {
        store.upsert("recall", batch).await.expect("upsert");
    }
    let (mut found, mut total) = (0usize, 0usize);
    for _ in 0..30 {
        let q = rng.vector(DIM);
        let mut exact: Vec<(f32, &str)> = pts
            .iter()
            .map(|p| (Distance::Cosine.score(&q, &p.vector), p.id.as_str()))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        let want: Vec<&str> = exact.iter().take(10).map(|e| e.1).collect();
        let hits = store
            .search("recall", &VectorQuery::new(q, 10))
            .await
            .expect("search");
        total += want.len();
        found += hits
            .iter()
            .filter(|h| want.contains(&h.id.as_str()))
            .count();
    }
    let recall = found as f64 / total as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

/// Keyword search (where the backend has it) ranks points with more of the words first,
/// honours filters and forgets deleted points.
#[allow(clippy::print_stderr)] // the skip notice is meant for the terminal
pub async fn keyword_search_when_supported(store: &dyn VectorStore) {
    create(store, "kw", 2, Distance::Cosine).await;
    let text = |id: &str, words: &str, source: &str| {
        point(id, &[1.0, 0.0], json!({TEXT_KEY: words, "source": source}))
    };
    store
        .upsert(
            "kw",
            &[
                text(
                    "both",
                    "Restart the agent after a crash of the queue",
                    "ops.md",
                ),
                text("one", "The queue keeps tasks durable", "queue.md"),
                text("none", "Discord gateway shards and leases", "discord.md"),
                text("gone", "queue crash restart agent", "old.md"),
            ],
        )
        .await
        .expect("upsert");
    store.delete("kw", &["gone".into()]).await.expect("delete");
    let query = |text: &str, filter: Filter| TextQuery {
        text: text.into(),
        limit: 10,
        filter,
    };
    let Some(hits) = store
        .search_text("kw", &query("queue crash restart", Filter::all()))
        .await
        .expect("keyword search")
    else {
        eprintln!(
            "{}: no keyword index; keyword behaviour not checked",
            store.backend()
        );
        return;
    };
    assert_eq!(ids(&hits), ["both", "one"]);
    assert_eq!(hits[0].payload["source"], "ops.md");
    // Another collection whose points match the words better and outnumber the answer many
    // times over does not crowd this collection's points out.
    create(store, "kw-other", 2, Distance::Cosine).await;
    let crowd: Vec<Point> = (0..60)
        .map(|i| {
            text(
                &format!("crowd{i}"),
                "queue crash restart queue crash restart",
                "crowd.md",
            )
        })
        .collect();
    store
        .upsert("kw-other", &crowd)
        .await
        .expect("upsert crowd");
    for limit in [1, 2, 10] {
        let hits = store
            .search_text(
                "kw",
                &TextQuery {
                    limit,
                    ..query("queue crash restart", Filter::all())
                },
            )
            .await
            .expect("keyword search beside another collection")
            .expect("supported");
        assert_eq!(ids(&hits), ["both", "one"][..limit.min(2)], "limit {limit}");
    }
    let crowded = store
        .search_text("kw-other", &query("restart", Filter::all()))
        .await
        .expect("the other collection")
        .expect("supported");
    assert_eq!(crowded.len(), 10);
    assert!(crowded.iter().all(|h| h.id.starts_with("crowd")));
    let filtered = store
        .search_text(
            "kw",
            &query("queue", Filter::must(Condition::eq("source", "queue.md"))),
        )
        .await
        .expect("filtered")
        .expect("supported");
    assert_eq!(ids(&filtered), ["one"]);
    // Punctuation and operators of the engine's query syntax are words, not syntax.
    let odd = store
        .search_text("kw", &query("\"queue\" OR (NEAR* -crash:", Filter::all()))
        .await
        .expect("odd text is searched, not parsed")
        .expect("supported");
    assert!(ids(&odd).contains(&"one"), "{odd:?}");
    let nothing = store
        .search_text("kw", &query("   ", Filter::all()))
        .await
        .expect("blank")
        .expect("supported");
    assert!(nothing.is_empty());
}

/// What one handle writes, another handle on the same collections (another process) finds.
pub async fn writes_reach_other_processes(store: &dyn VectorStore, other: &dyn VectorStore) {
    create(store, "shared", 2, Distance::Cosine).await;
    store
        .upsert("shared", &[point("one", &[1.0, 0.0], json!({"n": 1}))])
        .await
        .expect("upsert");
    assert_eq!(
        other.count("shared", &Filter::all()).await.expect("count"),
        1
    );
    other
        .upsert("shared", &[point("two", &[0.0, 1.0], json!({"n": 2}))])
        .await
        .expect("upsert from the other");
    let hits = store
        .search("shared", &VectorQuery::new(vec![0.0, 1.0], 1))
        .await
        .expect("search");
    assert_eq!(ids(&hits), ["two"]);
    other
        .delete("shared", &["one".into()])
        .await
        .expect("delete");
    assert_eq!(
        store.count("shared", &Filter::all()).await.expect("count"),
        1
    );
    store.delete_collection("shared").await.expect("drop");
    assert!(
        other
            .collection("shared")
            .await
            .expect("describe")
            .is_none()
    );
}

/// A tiny deterministic generator, so the suite needs no random crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vector(&mut self, d: usize) -> Vec<f32> {
        (0..d).map(|_| self.next()).collect()
    }
}

/// One `#[tokio::test]` per behaviour of the vector conformance suite for `$backend` (a
/// [`VectorBackend`]).
#[macro_export]
macro_rules! vector_conformance_tests {
    ($backend:ty) => {
        $crate::__vector_conformance_tests!(
            $backend,
            collections_lifecycle,
            points_round_trip,
            search_ranks_by_distance,
            filters_keep_matching_points,
            bad_vectors_are_refused_whole,
            delete_where_removes_matches,
            search_agrees_with_brute_force,
            keyword_search_when_supported,
        );

        #[tokio::test]
        #[allow(clippy::print_stderr)] // the skip notice is meant for the terminal
        async fn writes_reach_other_processes() {
            use $crate::conformance::vectors::VectorBackend as _;
            let Some(backend) = <$backend>::open().await else {
                return;
            };
            let Some(other) = backend.second().await else {
                eprintln!("the backend is not shared between processes: nothing to check");
                return;
            };
            $crate::conformance::vectors::writes_reach_other_processes(
                &*backend.vectors(),
                &*other,
            )
            .await;
            backend.cleanup().await;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __vector_conformance_tests {
    ($backend:ty, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                use $crate::conformance::vectors::VectorBackend as _;
                let Some(backend) = <$backend>::open().await else {
                    return;
                };
                $crate::conformance::vectors::$name(&*backend.vectors()).await;
                backend.cleanup().await;
            }
        )*
    };
}
