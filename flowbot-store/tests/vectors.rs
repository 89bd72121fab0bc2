//! The vector conformance suite on the embedded backend: in memory, on SQLite (searched
//! exactly, and through the HNSW graph with a low threshold) and on PostgreSQL; plus what
//! only the embedded backend promises (a restart reloads the points from the database).

mod support;

use std::sync::Arc;

use flowbot_core::VectorStore;
use flowbot_core::vector::{CollectionSpec, Distance, Filter, Point, VectorQuery};
use flowbot_store::conformance::vectors::VectorBackend;
use flowbot_store::vectors::{EmbeddedVectors, IndexOptions};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteStore};
use support::Harness;

fn graph_options() -> IndexOptions {
    let mut options = IndexOptions::default();
    options.exact_below = 500;
    options
}

struct Memory(EmbeddedVectors);

impl VectorBackend for Memory {
    async fn open() -> Option<Self> {
        Some(Memory(
            EmbeddedVectors::memory(IndexOptions::default()).expect("options"),
        ))
    }
    fn vectors(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.0.clone())
    }
}

/// A fresh SQLite file; the second handle is another store on the same file, as the
/// `kb ingest` command beside a running server.
struct Sqlite<const GRAPH: bool>(Harness, EmbeddedVectors);

fn options(graph: bool) -> IndexOptions {
    if graph {
        graph_options()
    } else {
        IndexOptions::default()
    }
}

impl<const GRAPH: bool> VectorBackend for Sqlite<GRAPH> {
    async fn open() -> Option<Self> {
        let h = support::sqlite().await;
        let Harness::Sqlite { store, .. } = &h else {
            unreachable!("a SQLite harness")
        };
        let vectors = EmbeddedVectors::sqlite(store, options(GRAPH)).expect("options");
        Some(Sqlite(h, vectors))
    }
    fn vectors(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.1.clone())
    }
    async fn second(&self) -> Option<Arc<dyn VectorStore>> {
        let file = self.0.sqlite_file().expect("a file");
        let store = SqliteStore::open_with(flowbot_store::SqliteOptions::new(&file))
            .await
            .expect("open the file again");
        Some(Arc::new(
            EmbeddedVectors::sqlite(&store, options(GRAPH)).expect("options"),
        ))
    }
}

/// A fresh schema; the second handle is another connection pool to it (another server).
struct Postgres(Harness, EmbeddedVectors);

impl VectorBackend for Postgres {
    async fn open() -> Option<Self> {
        let h = support::postgres().await?;
        let Harness::Postgres { store, .. } = &h else {
            unreachable!("a PostgreSQL harness")
        };
        let vectors = EmbeddedVectors::postgres(store, graph_options()).expect("options");
        Some(Postgres(h, vectors))
    }
    fn vectors(&self) -> Arc<dyn VectorStore> {
        Arc::new(self.1.clone())
    }
    async fn second(&self) -> Option<Arc<dyn VectorStore>> {
        let Harness::Postgres { url, schema, .. } = &self.0 else {
            unreachable!("a PostgreSQL harness")
        };
        let store = PostgresStore::connect_with(
            PostgresOptions::new(url.clone())
                .schema(schema.clone())
                .application_name(schema.clone()),
        )
        .await
        .expect("second PostgreSQL connection");
        Some(Arc::new(
            EmbeddedVectors::postgres(&store, graph_options()).expect("options"),
        ))
    }
    async fn cleanup(self) {
        self.0.cleanup().await;
    }
}

mod memory {
    flowbot_store::vector_conformance_tests!(super::Memory);
}

mod sqlite {
    flowbot_store::vector_conformance_tests!(super::Sqlite<false>);
}

mod sqlite_graph {
    flowbot_store::vector_conformance_tests!(super::Sqlite<true>);
}

mod postgres {
    flowbot_store::vector_conformance_tests!(super::Postgres);
}

/// A new process finds the collections and points in the database, searched through the
/// graph once there are enough; tombstones stay deleted.
#[tokio::test]
async fn a_restart_reloads_points_from_sqlite() {
    let h = support::sqlite().await;
    let file = h.sqlite_file().expect("a file");
    let Harness::Sqlite { store, .. } = &h else {
        unreachable!("a SQLite harness")
    };
    let first = EmbeddedVectors::sqlite(store, graph_options()).expect("options");
    first
        .create_collection(&CollectionSpec::new("docs", 4, Distance::Euclid))
        .await
        .expect("create");
    let points: Vec<Point> = (0..800)
        .map(|i| Point {
            id: format!("p{i}"),
            vector: vec![i as f32, (i % 7) as f32, (i % 11) as f32, 0.5],
            payload: serde_json::json!({"i": i})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        })
        .collect();
    first.upsert("docs", &points).await.expect("upsert");
    first
        .delete("docs", &["p0".into(), "p1".into()])
        .await
        .expect("delete");
    drop(first);
    let reopened = SqliteStore::open_with(flowbot_store::SqliteOptions::new(&file))
        .await
        .expect("reopen");
    let second = EmbeddedVectors::sqlite(&reopened, graph_options()).expect("options");
    assert_eq!(
        second.count("docs", &Filter::all()).await.expect("count"),
        798
    );
    let hits = second
        .search("docs", &VectorQuery::new(points[5].vector.clone(), 1))
        .await
        .expect("search");
    assert_eq!(hits[0].id, "p5");
    assert!(second.memory_bytes("docs").is_some_and(|b| b > 798 * 16));
    assert!(
        second
            .get("docs", &["p0".into()])
            .await
            .expect("get")
            .is_empty()
    );
}

/// In a collection of 10,000 points or more, SQLite's keyword search lets the words found in
/// more than a twentieth of the rows only add to the chunks holding a rarer word of the
/// query; when fewer of those exist than were asked for, every word matches again.
#[tokio::test]
async fn keyword_search_in_a_large_sqlite_collection_leads_with_rare_words() {
    use flowbot_core::vector::{TEXT_KEY, TextQuery};
    let h = support::sqlite().await;
    let Harness::Sqlite { store, .. } = &h else {
        unreachable!("a SQLite harness")
    };
    let mut exact = IndexOptions::default();
    exact.exact_below = 1_000_000;
    let vectors = EmbeddedVectors::sqlite(store, exact).expect("options");
    vectors
        .create_collection(&CollectionSpec::new("big", 2, Distance::Cosine))
        .await
        .expect("create");
    // Every chunk says "queue worker"; one in 16 also "gateway" (6%: common); three say
    // "lease" (rare).
    let rare = [7, 77, 777];
    let points: Vec<Point> = (0..10_000)
        .map(|i| {
            let mut text = String::from("queue worker");
            if i % 16 == 0 {
                text.push_str(" gateway");
            }
            if rare.contains(&i) {
                text.push_str(" lease");
            }
            Point {
                id: format!("c{i}"),
                vector: vec![1.0, i as f32],
                payload: serde_json::json!({ TEXT_KEY: text })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    vectors.upsert("big", &points).await.expect("upsert");
    let search = |text: &str, limit: usize| {
        let vectors = vectors.clone();
        let query = TextQuery {
            text: text.into(),
            limit,
            filter: Filter::all(),
        };
        async move {
            vectors
                .search_text("big", &query)
                .await
                .expect("keyword search")
                .expect("SQLite has keyword search")
        }
    };
    let holds = |id: &str, word: &str| {
        let i: usize = id[1..].parse().expect("an id");
        points[i].payload[TEXT_KEY]
            .as_str()
            .is_some_and(|t| t.contains(word))
    };
    let hits = search("gateway lease", 2).await;
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| holds(&h.id, "lease")), "{hits:?}");
    // Three chunks hold the rare word, five are asked for: the common word fills the rest.
    let hits = search("gateway lease", 5).await;
    assert_eq!(hits.len(), 5, "{hits:?}");
    assert!(hits[..3].iter().all(|h| holds(&h.id, "lease")), "{hits:?}");
    assert!(
        hits[3..].iter().all(|h| holds(&h.id, "gateway")),
        "{hits:?}"
    );
    // Only common words: every word matches.
    assert_eq!(search("queue worker", 10).await.len(), 10);
    assert_eq!(search("lease", 10).await.len(), 3);
}
