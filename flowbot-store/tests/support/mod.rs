//! Test harness: fresh SQLite files, fresh PostgreSQL schemas and fresh in-memory stores,
//! one per test.
#![allow(dead_code, unreachable_pub, clippy::print_stderr)] // the skip notice is meant for the terminal

use std::path::PathBuf;
use std::sync::Arc;

use flowbot_core::Store;
use flowbot_store::{MemoryStore, PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("flowbot-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Another process's write lock on a SQLite file: `BEGIN EXCLUSIVE` on a connection of its
/// own, held until [`SqliteLock::release`].
pub struct SqliteLock(sqlx::SqliteConnection);

impl SqliteLock {
    pub async fn take(file: &std::path::Path) -> Self {
        use sqlx::Connection as _;
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
            .await
            .expect("connect");
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .expect("lock");
        SqliteLock(other)
    }

    pub async fn release(mut self) {
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.0)
            .await
            .expect("unlock");
    }
}

pub enum Harness {
    Sqlite {
        store: SqliteStore,
        _dir: TempDir,
    },
    Postgres {
        store: PostgresStore,
        url: String,
        schema: String,
    },
    Memory {
        store: MemoryStore,
    },
}

impl Harness {
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Harness::Sqlite { store, .. } => Arc::new(store.clone()),
            Harness::Postgres { store, .. } => Arc::new(store.clone()),
            Harness::Memory { store } => Arc::new(store.clone()),
        }
    }

    /// A second, independent connection to the same database (another server or agent). A
    /// clone of an in-memory store shares its state.
    pub async fn second_store(&self) -> Arc<dyn Store> {
        match self {
            Harness::Sqlite { store, .. } => Arc::new(store.clone()),
            Harness::Memory { store } => Arc::new(store.clone()),
            Harness::Postgres { url, schema, .. } => Arc::new(
                PostgresStore::connect_with(
                    PostgresOptions::new(url.clone())
                        .schema(schema.clone())
                        .application_name(schema.clone()),
                )
                .await
                .expect("second PostgreSQL connection"),
            ),
        }
    }

    /// The database file of a SQLite harness.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        match self {
            Harness::Sqlite { _dir, .. } => Some(_dir.0.join("flowbot.db")),
            Harness::Postgres { .. } | Harness::Memory { .. } => None,
        }
    }

    /// Kill every server connection of this test's stores (the database "goes away").
    pub async fn kill_connections(&self) -> i64 {
        let Harness::Postgres { url, schema, .. } = self else {
            return 0;
        };
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .expect("admin connection");
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
        )
        .bind(schema)
        .fetch_one(&mut admin)
        .await
        .expect("terminate backends")
    }

    pub async fn cleanup(self) {
        if let Harness::Postgres { store, schema, .. } = self {
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(store.pool())
                .await;
        }
    }
}

pub async fn sqlite() -> Harness {
    sqlite_with(|o| o).await
}

pub async fn sqlite_with(f: impl FnOnce(SqliteOptions) -> SqliteOptions) -> Harness {
    let dir = TempDir::new();
    let store = SqliteStore::open_with(f(SqliteOptions::new(dir.0.join("flowbot.db"))))
        .await
        .expect("open SQLite store");
    Harness::Sqlite { store, _dir: dir }
}

pub fn memory() -> Harness {
    Harness::Memory {
        store: MemoryStore::new(),
    }
}

/// The PostgreSQL URL for tests. In CI (`CI=true`) it must be set; elsewhere a missing URL
/// skips the PostgreSQL half of the suite, loudly.
pub fn postgres_url() -> Option<String> {
    match std::env::var("FLOWBOT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!(
                "CI=true but FLOWBOT_TEST_POSTGRES_URL is not set: the PostgreSQL conformance suite must run in CI"
            )
        }
        _ => {
            eprintln!("SKIPPED: PostgreSQL test (set FLOWBOT_TEST_POSTGRES_URL to run it)");
            None
        }
    }
}

pub async fn postgres() -> Option<Harness> {
    let url = postgres_url()?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStore::connect_with(
        PostgresOptions::new(url.clone())
            .schema(schema.clone())
            .application_name(schema.clone()),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("FLOWBOT_TEST_POSTGRES_URL is set but PostgreSQL is not usable: {e}")
    });
    Some(Harness::Postgres { store, url, schema })
}

/// The SQLite backend of the conformance suite: a fresh database file per test.
pub struct Sqlite(Harness);

impl flowbot_store::conformance::Backend for Sqlite {
    async fn open() -> Option<Self> {
        let h = sqlite().await;
        // The suite skips the liveness behaviours for a backend without liveness locks;
        // this one has them.
        assert!(
            h.store().liveness_dir().is_some(),
            "SQLite names a liveness directory"
        );
        Some(Sqlite(h))
    }
    fn store(&self) -> Arc<dyn Store> {
        self.0.store()
    }
    async fn second_store(&self) -> Arc<dyn Store> {
        self.0.second_store().await
    }
}

/// The PostgreSQL backend of the conformance suite: a fresh schema per test, dropped after
/// it; skipped, loudly, without `FLOWBOT_TEST_POSTGRES_URL` (and failing in CI).
pub struct Postgres(Harness);

impl flowbot_store::conformance::Backend for Postgres {
    async fn open() -> Option<Self> {
        let h = postgres().await?;
        assert!(
            h.store().liveness_dir().is_some(),
            "PostgreSQL names a liveness directory"
        );
        Some(Postgres(h))
    }
    fn store(&self) -> Arc<dyn Store> {
        self.0.store()
    }
    async fn second_store(&self) -> Arc<dyn Store> {
        self.0.second_store().await
    }
    async fn cleanup(self) {
        self.0.cleanup().await;
    }
}

/// The in-memory backend of the conformance suite: a new store per test; a clone is the
/// second connection.
pub struct Memory(Harness);

impl flowbot_store::conformance::Backend for Memory {
    async fn open() -> Option<Self> {
        let h = memory();
        assert!(
            h.store().liveness_dir().is_some(),
            "the in-memory store names a liveness directory"
        );
        Some(Memory(h))
    }
    fn store(&self) -> Arc<dyn Store> {
        self.0.store()
    }
    async fn second_store(&self) -> Arc<dyn Store> {
        self.0.second_store().await
    }
}

/// One test per backend (SQLite, PostgreSQL, in-memory) for each listed behaviour of a test
/// file of its own (the workflow engine's, the pipeline's faults): `single` ones get a store,
/// `pair` ones two independent connections to the same database (another server or agent).
/// PostgreSQL tests skip, loudly, without `FLOWBOT_TEST_POSTGRES_URL` (and fail in CI).
#[allow(unused_macros)] // not every test file runs behaviours per store
macro_rules! conformance {
    (single: [$($one:ident),* $(,)?], pair: [$($two:ident),* $(,)?]) => {
        conformance!(@backend sqlite, Sqlite, [$($one),*], [$($two),*]);
        conformance!(@backend postgres, Postgres, [$($one),*], [$($two),*]);
        conformance!(@backend memory, Memory, [$($one),*], [$($two),*]);
    };
    (@backend $module:ident, $backend:ident, [$($one:ident),*], [$($two:ident),*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $one() {
                    flowbot_store::conformance::run_single::<crate::support::$backend, _, _>(
                        crate::$one,
                    )
                    .await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $two() {
                    flowbot_store::conformance::run_pair::<crate::support::$backend, _, _>(
                        crate::$two,
                    )
                    .await;
                }
            )*
        }
    };
}
