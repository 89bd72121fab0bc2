//! The embedded SQLite backend: one file under a data directory, WAL journal, a pool of
//! readers and two writer connections that take turns (SQLite serialises writers anyway; the
//! turns avoid its busy retries). The hot writes (enqueues, stored messages, claims,
//! completions) share a group commit on a thread of its own, with its own connection
//! (`writes`), which puts enqueues from outside first (`share`); the rest use a
//! one-connection sqlx pool, each after taking the write token (`token`).

mod admin;
mod audit;
mod data;
mod share;
mod tasks;
mod token;
#[cfg(feature = "vectors")]
mod vectors;
mod workflow;
mod writes;

use share::{Origin, WorkShare};
use tasks::{claim_in, complete_in, insert_one, insert_plain, insert_task, insert_tasks, map_lite};
use token::{WriteToken, closing};
use writes::{ClaimOrder, GROUP_COMMIT_MAX, MessageRow, Write, checkpoints};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::store::{
    Bus, BusMessage, Conversation, ConversationStore, KvStore, Page, SessionStore, StoredMessage,
};
use flowbot_core::task::{
    ClaimRequest, ClaimedTask, DeadLetter, Enqueued, FailOutcome, Failure, FireOutcome, NewTask,
    ScheduleDef, ScheduleState, ScheduleStore, TaskAdmin, TaskFilter, TaskId, TaskQueue,
    TaskRecord, TaskState,
};
use flowbot_core::{
    ChannelName, ConversationId, Message, Outbound, Session, SessionKey, Store, StoreError,
};
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::common::{
    self, Migration, SCHEDULE_COLUMNS, TASK_COLUMNS, from_ms, map_err, ms, now_ms, page_limit,
    paginate, schedule_row, task_id_json, task_record,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "workflows",
        sql: include_str!("../../migrations/sqlite/0002_workflows.sql"),
    },
    Migration {
        version: 3,
        name: "leases",
        sql: include_str!("../../migrations/sqlite/0003_leases.sql"),
    },
    Migration {
        version: 4,
        name: "audit",
        sql: include_str!("../../migrations/sqlite/0004_audit.sql"),
    },
    Migration {
        version: 5,
        name: "vectors",
        sql: include_str!("../../migrations/sqlite/0005_vectors.sql"),
    },
];

/// [`SqliteOptions::work_share`] unless set.
pub const DEFAULT_WORK_SHARE: f64 = 0.1;

/// The smallest [`SqliteOptions::work_share`].
const MIN_WORK_SHARE: f64 = 0.01;

/// Options for [`SqliteStore::open_with`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Database file.
    pub path: PathBuf,
    /// Reader connections (writes always use one connection).
    pub readers: u32,
    /// How long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// `synchronous` pragma: `NORMAL` (default; durable across process crashes, and WAL keeps
    /// the database consistent across power loss) or `FULL` (each commit survives power loss).
    pub synchronous_full: bool,
    /// While enqueues from outside the worker pools flood in (webhooks and API requests
    /// waiting for their acknowledgement, 1,000 a second or more, queued up behind the
    /// writer), the least share of the writer's time left to processing: claims, completions,
    /// stored messages and the tasks handlers enqueue (0.01 to 1; 1 gives intake no priority).
    /// Otherwise processing has the writer to itself. Default [`DEFAULT_WORK_SHARE`].
    /// [`SqliteStore::open_with`] refuses a value outside 0.01 to 1, or not a number.
    pub work_share: f64,
}

impl SqliteOptions {
    /// Check the options are in range: [`SqliteOptions::work_share`] from 0.01 to 1.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_WORK_SHARE..=1.0).contains(&self.work_share) {
            return Err(Error::InvalidOption(format!(
                "work_share must be a number from 0.01 to 1, got {}",
                self.work_share
            )));
        }
        Ok(())
    }

    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            readers: 4,
            busy_timeout: Duration::from_secs(10),
            synchronous_full: false,
            work_share: DEFAULT_WORK_SHARE,
        }
    }

    /// Defaults for the file of a `sqlite://path` URL, creating its directory.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Error::InvalidUrl(format!("'{url}' is not a sqlite:// URL with a file path"))
            })?;
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Open(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        Ok(SqliteOptions::new(path))
    }
}

/// The SQLite store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    stop_checkpoints: CancellationToken,
    writer: SqlitePool,
    reader: SqlitePool,
    wake: watch::Sender<u64>,
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    writes: mpsc::Sender<Write>,
    token: Arc<WriteToken>,
    /// Where worker pools keep their liveness locks: `<database file>.workers`.
    liveness_dir: Option<PathBuf>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_checkpoints.cancel();
    }
}

impl SqliteStore {
    /// Open (creating if needed) `flowbot.db` in `data_dir`, creating the directory too, and
    /// apply migrations.
    pub async fn open_in_dir(data_dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Open(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        Self::open_with(SqliteOptions::new(dir.join("flowbot.db"))).await
    }

    /// Open a database from a `sqlite://path` URL.
    pub async fn open_url(url: &str) -> Result<Self, Error> {
        Self::open_with(SqliteOptions::from_url(url)?).await
    }

    /// Open with explicit options and apply migrations. Options out of range are refused
    /// with [`Error::InvalidOption`].
    pub async fn open_with(options: SqliteOptions) -> Result<Self, Error> {
        options.validate()?;
        let sync = if options.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(options.busy_timeout)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-8000")
            // A WAL that grew under a burst is cut back to this size when it restarts.
            .pragma("journal_size_limit", "134217728");
        let open_err = |e: sqlx::Error| Error::Open(format!("{}: {e}", options.path.display()));
        // The writer never checkpoints inside a commit (that fsyncs, and would land on one
        // unlucky request's latency); a background connection checkpoints instead.
        // No ping before each acquire: the pools never leave this process, and a ping is one
        // more round trip to SQLite's worker thread on every write.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(open_err)?;
        migrate(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.clone())
            .await
            .map_err(open_err)?;
        let stop_checkpoints = CancellationToken::new();
        tokio::spawn(checkpoints(checkpointer, stop_checkpoints.clone()));
        let reader = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect.read_only(true))
            .await
            .map_err(open_err)?;
        let (wake, _) = watch::channel(0);
        let (bus, _) = tokio::sync::broadcast::channel(1024);
        let (writes, write_rx) = mpsc::channel(4 * GROUP_COMMIT_MAX);
        let token = WriteToken::new();
        writes::spawn_group_commit(&options, token.clone(), wake.clone(), write_rx)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                stop_checkpoints,
                writer,
                reader,
                wake,
                bus,
                writes,
                token,
                liveness_dir: tasks::liveness_dir(&options.path),
            }),
        })
    }

    /// Close the store: later writes and reads fail as unavailable.
    pub async fn close(&self) {
        self.inner.token.close();
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }

    /// The sqlx writer pool's connection, with the write token.
    async fn w(&self) -> Result<WriterConn, StoreError> {
        let token = self.inner.token.take().await?;
        let conn = self.inner.writer.acquire().await.map_err(map_err)?;
        Ok(WriterConn {
            conn,
            _token: token,
        })
    }

    fn r(&self) -> &SqlitePool {
        &self.inner.reader
    }

    fn wake(&self) {
        self.inner.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Hand a write to the group commit and wait for its committed result.
    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (done, answer) = oneshot::channel();
        let closed = || StoreError::Unavailable("the store is closing".into());
        self.inner
            .writes
            .send(make(done))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// A `BEGIN IMMEDIATE` transaction on the sqlx writer pool, with the write token.
    async fn begin(&self) -> Result<WriteTx, StoreError> {
        let token = self.inner.token.take().await?;
        let tx = self
            .inner
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        Ok(WriteTx { tx, _token: token })
    }
}

/// A connection of the sqlx writer pool, held with the write token (given back after the
/// connection, when this drops).
struct WriterConn {
    conn: PoolConnection<Sqlite>,
    _token: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for WriterConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// A transaction on the sqlx writer pool, held with the write token.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    _token: tokio::sync::OwnedSemaphorePermit,
}

impl WriteTx {
    /// Commit, then give the token back.
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Sqlite>;
    fn deref(&self) -> &Transaction<'static, Sqlite> {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Transaction<'static, Sqlite> {
        &mut self.tx
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let err = |version: i64, e: sqlx::Error| Error::Migration {
        version,
        detail: e.to_string(),
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flowbot_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(|e| err(0, e))?;
    for m in MIGRATIONS {
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| err(m.version, e))?;
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM flowbot_migrations WHERE version = ?")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| err(m.version, e))?;
        if done.is_none() {
            sqlx::raw_sql(m.sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| err(m.version, e))?;
            sqlx::query(
                "INSERT INTO flowbot_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| err(m.version, e))?;
        }
        tx.commit().await.map_err(|e| err(m.version, e))?;
    }
    Ok(())
}

#[async_trait]
impl Bus for SqliteStore {
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError> {
        crate::check_bus_payload(payload)?;
        // No subscriber is not an error: nobody is listening in this process.
        let _ = self.inner.bus.send(BusMessage {
            topic: topic.into(),
            payload: payload.into(),
        });
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusMessage> {
        self.inner.bus.subscribe()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.r())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

impl FromStr for SqliteOptions {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::InvalidUrl("empty SQLite path".into()));
        }
        Ok(SqliteOptions::new(s))
    }
}
