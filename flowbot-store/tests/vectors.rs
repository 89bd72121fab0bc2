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
