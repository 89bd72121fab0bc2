//! SqliteStore's write path: the group commit that shares one transaction between
//! concurrent writers, and the background WAL checkpoints.

use super::*;

/// Copy the WAL into the database file every 200 ms (a `PASSIVE` checkpoint: it never blocks
/// readers or the writer). The WAL restarts from its beginning once a checkpoint has caught up.
pub(super) async fn checkpoints(pool: SqlitePool, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        // A passive checkpoint never waits for the writer, but under a steady stream of
        // commits it never catches up with the end of the WAL either, and SQLite only starts
        // the WAL over once everything in it is checkpointed: it would grow without bound.
        // Past WAL_RESTART_PAGES a RESTART checkpoint holds the writer back for the moment
        // it takes to copy the rest, so the next commit starts the WAL from the beginning.
        let mode = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok((_, log, _)) if log > WAL_RESTART_PAGES => "PRAGMA wal_checkpoint(RESTART)",
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed; retrying");
                continue;
            }
        };
        if let Err(e) = sqlx::query(mode).execute(&pool).await {
            tracing::debug!(error = %e, "WAL restart checkpoint failed; retrying");
        }
    }
    // A last checkpoint so the file is complete on its own after a clean shutdown.
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await;
    pool.close().await;
}

/// WAL size, in pages, past which the checkpointer starts the WAL over (64 MiB of 4 KiB pages).
const WAL_RESTART_PAGES: i64 = 16_384;

/// A write waiting for the writer thread, with where to send its result.
pub(super) enum Write {
    Enqueue(NewTask, oneshot::Sender<Result<Enqueued, StoreError>>),
    /// Tasks enqueued together: all or none.
    Batch(
        Vec<NewTask>,
        oneshot::Sender<Result<Vec<Enqueued>, StoreError>>,
    ),
    /// A message for the history; answered with whether it was new.
    Message(Box<MessageRow>, oneshot::Sender<Result<bool, StoreError>>),
    Complete(
        String,
        Vec<TaskId>,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
    Claim(
        ClaimOrder,
        oneshot::Sender<Result<Vec<ClaimedTask>, StoreError>>,
    ),
}

/// A [`ClaimRequest`] the writer thread can keep.
pub(super) struct ClaimOrder {
    pub(super) worker: String,
    pub(super) queue: String,
    /// The kinds as a JSON array, for `json_each`.
    pub(super) kinds: String,
    pub(super) limit: u32,
    pub(super) lease: Duration,
}

impl ClaimOrder {
    pub(super) fn of(req: &ClaimRequest<'_>) -> Result<Self, StoreError> {
        Ok(ClaimOrder {
            worker: req.worker.to_owned(),
            queue: req.queue.to_owned(),
            kinds: serde_json::to_string(req.kinds)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
            limit: req.limit,
            lease: req.lease,
        })
    }
}

/// A write's result, held until its transaction commits.
enum Done {
    Enqueued(Enqueued),
    Batch(Vec<Enqueued>),
    Stored(bool),
    Completed(u64, bool),
    Claimed(Vec<ClaimedTask>),
}

/// Most writes committed in one transaction.
pub(super) const GROUP_COMMIT_MAX: usize = 512;

/// The right to write. SQLite lets one connection write at a time, and two write here: the
/// writer thread's own, for the hot writes (enqueues, messages, claims, completions), and the
/// sqlx writer pool's, for everything else. Whoever writes holds the token, so the two never
/// meet in SQLite's lock (whose busy handler sleeps a millisecond or more). The writer thread
/// holds the token while it has writes to do, and hands it over between two transactions when
/// someone waits for it; idle, it leaves the token free.
pub(super) struct WriteToken {
    permit: Arc<tokio::sync::Semaphore>,
    wanted: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for WriteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteToken")
            .field("wanted", &self.wanted)
            .finish_non_exhaustive()
    }
}

/// Counts a caller waiting for the token, until it has it or gives up.
struct Wanting<'a>(&'a WriteToken);

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        self.0
            .wanted
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn closing() -> StoreError {
    StoreError::Unavailable("the store is closing".into())
}

impl WriteToken {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(WriteToken {
            permit: Arc::new(tokio::sync::Semaphore::new(1)),
            wanted: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Take the token for a write on the sqlx pool, waiting (in turn) for the writer thread
    /// to finish its current transaction if it is busy.
    pub(super) async fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        self.wanted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _wanting = Wanting(self);
        self.permit
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closing())
    }

    fn is_wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Refuse the token from now on: every later write fails as the store closing.
    pub(super) fn close(&self) {
        self.permit.close();
    }
}

/// Run `f` in a `BEGIN IMMEDIATE` transaction on `db`, committed if it succeeds.
fn in_tx<T>(
    db: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let run = |sql: &str| {
        db.prepare_cached(sql)
            .and_then(|mut s| s.raw_execute())
            .map_err(map_lite)
    };
    run("BEGIN IMMEDIATE")?;
    match f(db).and_then(|out| run("COMMIT").map(|_| out)) {
        Ok(out) => Ok(out),
        Err(e) => {
            if !db.is_autocommit() {
                let _ = run("ROLLBACK");
            }
            Err(e)
        }
    }
}

/// Run `writes` on `db` (in a transaction) with as few statements as the group allows: the
/// plain enqueues in multi-row inserts, the messages in their order with their conversations'
/// counts once per conversation, then the rest in order.
fn apply(db: &Connection, writes: &[Write], now: i64) -> Result<Vec<Done>, StoreError> {
    let plain: Vec<&NewTask> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Enqueue(t, _) if t.dedupe_key.is_none() => Some(t),
            _ => None,
        })
        .collect();
    let mut enqueued = insert_plain(db, &plain, now)?.into_iter();
    let mut stored = insert_messages(db, writes)?.into_iter();
    let missing = || StoreError::Corrupt("missing write result".into());
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            Write::Enqueue(t, _) if t.dedupe_key.is_none() => {
                Done::Enqueued(enqueued.next().ok_or_else(missing)?)
            }
            Write::Enqueue(t, _) => Done::Enqueued(insert_one(db, t, now)?),
            Write::Batch(tasks, _) => Done::Batch(insert_tasks(db, tasks, now)?),
            Write::Message(..) => Done::Stored(stored.next().ok_or_else(missing)?),
            Write::Complete(worker, ids, _) => {
                let (n, released) = complete_in(db, worker, ids, now)?;
                Done::Completed(n, released)
            }
            Write::Claim(order, _) => Done::Claimed(claim_in(db, order, now)?),
        });
    }
    Ok(out)
}

/// A row of `flowbot_messages`, built by the caller (the JSON body too), so the writer
/// thread only inserts it.
pub(super) struct MessageRow {
    channel: String,
    conversation: String,
    direction: &'static str,
    message_id: String,
    sender: Option<String>,
    text: String,
    body: String,
    at: i64,
}

impl MessageRow {
    /// The row of an inbound message.
    pub(super) fn inbound(m: &Message) -> Result<Self, StoreError> {
        Ok(MessageRow {
            channel: m.channel.to_string(),
            conversation: m.conversation.to_string(),
            direction: "inbound",
            message_id: m.id.to_string(),
            sender: Some(m.sender.id.to_string()),
            text: m.text.clone(),
            body: message_json(m)?,
            at: ms(m.received_at),
        })
    }

    /// The row of an outbound message, stored now under a new id.
    pub(super) fn outbound(o: &Outbound) -> Result<Self, StoreError> {
        let target = o
            .target
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("outbound message has no target".into()))?;
        Ok(MessageRow {
            channel: target.channel.to_string(),
            conversation: target.conversation.to_string(),
            direction: "outbound",
            message_id: crate::new_message_id(),
            sender: None,
            text: o.text.clone(),
            body: message_json(o)?,
            at: now_ms(),
        })
    }
}

/// A message as stored in `body`.
fn message_json(m: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(m).map_err(|e| StoreError::Invalid(format!("message: {e}")))
}

/// Store the inbound and outbound messages of `writes` in their order, and count the new ones
/// in their conversations. Returns, per message, whether it was new: an inbound message already
/// stored, or repeated earlier in `writes`, is not (and is not stored again).
fn insert_messages(db: &Connection, writes: &[Write]) -> Result<Vec<bool>, StoreError> {
    let rows: Vec<&MessageRow> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Message(row, _) => Some(row.as_ref()),
            _ => None,
        })
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = std::collections::HashSet::new();
    let mut stored = db
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM flowbot_messages \
             WHERE channel = ? AND direction = 'inbound' AND message_id = ?)",
        )
        .map_err(map_lite)?;
    let mut insert = db
        .prepare_cached(
            "INSERT INTO flowbot_messages (channel, conversation, direction, message_id, sender, text, body, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .map_err(map_lite)?;
    // Each conversation once: (first at, last at, new messages).
    let mut counts: std::collections::HashMap<(&str, &str), (i64, i64, i64)> =
        std::collections::HashMap::new();
    let mut new = Vec::with_capacity(rows.len());
    for r in rows {
        let fresh = r.direction != "inbound"
            || (seen.insert((r.channel.as_str(), r.message_id.as_str()))
                && !stored
                    .query_row(rusqlite::params![r.channel, r.message_id], |row| {
                        row.get::<_, bool>(0)
                    })
                    .map_err(map_lite)?);
        new.push(fresh);
        if !fresh {
            continue;
        }
        insert
            .execute(rusqlite::params![
                r.channel,
                r.conversation,
                r.direction,
                r.message_id,
                r.sender,
                r.text,
                r.body,
                r.at
            ])
            .map_err(map_lite)?;
        let c = counts
            .entry((r.channel.as_str(), r.conversation.as_str()))
            .or_insert((r.at, r.at, 0));
        c.0 = c.0.min(r.at);
        c.1 = c.1.max(r.at);
        c.2 += 1;
    }
    let mut upsert = db
        .prepare_cached(
            "INSERT INTO flowbot_conversations (channel, conversation, started_at, last_message_at, message_count) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (channel, conversation) DO UPDATE SET \
             last_message_at = MAX(last_message_at, excluded.last_message_at), \
             message_count = message_count + excluded.message_count",
        )
        .map_err(map_lite)?;
    for ((channel, conversation), (first, last, n)) in counts {
        upsert
            .execute(rusqlite::params![channel, conversation, first, last, n])
            .map_err(map_lite)?;
    }
    Ok(new)
}

/// Send each write its result (or the error that stopped its transaction). Returns whether
/// anything made new work claimable.
fn answer(w: Write, r: Result<Done, &StoreError>) -> bool {
    let err = |e: &StoreError| match e {
        StoreError::Unavailable(inner) => StoreError::Unavailable(inner.to_string().into()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Backend(other.to_string().into()),
    };
    match (w, r) {
        (Write::Enqueue(_, tx), Ok(Done::Enqueued(e))) => {
            let _ = tx.send(Ok(e));
            true
        }
        (Write::Batch(_, tx), Ok(Done::Batch(e))) => {
            let _ = tx.send(Ok(e));
            true
        }
        (Write::Message(_, tx), Ok(Done::Stored(b))) => {
            let _ = tx.send(Ok(b));
            false
        }
        (Write::Complete(_, _, tx), Ok(Done::Completed(n, released))) => {
            let _ = tx.send(Ok(n));
            released
        }
        (Write::Claim(_, tx), Ok(Done::Claimed(tasks))) => {
            let _ = tx.send(Ok(tasks));
            false
        }
        (w, r) => {
            let e = match r {
                Err(e) => err(e),
                Ok(_) => StoreError::Corrupt("mismatched write result".into()),
            };
            match w {
                Write::Enqueue(_, tx) => drop(tx.send(Err(e))),
                Write::Batch(_, tx) => drop(tx.send(Err(e))),
                Write::Message(_, tx) => drop(tx.send(Err(e))),
                Write::Complete(_, _, tx) => drop(tx.send(Err(e))),
                Write::Claim(_, tx) => drop(tx.send(Err(e))),
            }
            false
        }
    }
}

/// Open the writer thread's connection to the migrated database at `options.path`, with the
/// same settings as the sqlx writer pool's.
fn open_writer(options: &SqliteOptions) -> Result<Connection, crate::Error> {
    let err = |e: rusqlite::Error| crate::Error::Open(format!("{}: {e}", options.path.display()));
    let db = Connection::open_with_flags(
        &options.path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    db.busy_timeout(options.busy_timeout).map_err(err)?;
    // rusqlite keeps 16 prepared statements by default; the writer uses about a dozen plus
    // one multi-row task insert per group size (up to 64), and each one evicted is prepared
    // again on its next use.
    db.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    let synchronous = if options.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    for pragma in [
        "PRAGMA journal_mode = WAL".to_owned(),
        format!("PRAGMA synchronous = {synchronous}"),
        "PRAGMA foreign_keys = ON".to_owned(),
        "PRAGMA temp_store = memory".to_owned(),
        format!("PRAGMA cache_size = {WRITER_CACHE_KIB}"),
        // Checkpoints are the checkpointer's (see `checkpoints`), never inside a commit.
        "PRAGMA wal_autocheckpoint = 0".to_owned(),
        "PRAGMA journal_size_limit = 134217728".to_owned(),
    ] {
        // Some pragmas answer with a row; read it and go on.
        let mut statement = db.prepare(&pragma).map_err(err)?;
        let mut rows = statement.query([]).map_err(err)?;
        while rows.next().map_err(err)?.is_some() {}
    }
    Ok(db)
}

/// Prepared statements the writer thread keeps.
const WRITER_STATEMENTS: usize = 128;

/// The writer thread's page cache, as `cache_size` takes it (negative: KiB).
pub(super) const WRITER_CACHE_KIB: i64 = -8000;

/// Start the writer thread: the group commit, on its own connection, with a single-threaded
/// runtime for its queue. Its statements run on this thread, not sqlx-sqlite's worker thread:
/// each statement through sqlx is a message to that thread and one back, and a wake-up on
/// each side. The thread ends when the store, the last sender of writes, is dropped.
pub(super) fn spawn_group_commit(
    options: &SqliteOptions,
    token: Arc<WriteToken>,
    wake: watch::Sender<u64>,
    rx: mpsc::Receiver<Write>,
) -> Result<(), crate::Error> {
    let db = open_writer(options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| {
            crate::Error::Open(format!("cannot start the SQLite writer's runtime: {e}"))
        })?;
    std::thread::Builder::new()
        .name("flowbot-sqlite-writer".into())
        .spawn(move || runtime.block_on(group_commit(&db, &token, &wake, rx)))
        .map_err(|e| crate::Error::Open(format!("cannot start the SQLite writer thread: {e}")))?;
    Ok(())
}

/// Group commit: writes from concurrent callers (webhook enqueues, messages stored by the
/// pipeline, claims and acknowledgements) share one transaction, and each caller is answered
/// once it is committed. Under load this turns hundreds of commits into one; an idle store
/// commits each write at once. A group that fails is retried one write per transaction, so one
/// bad write fails alone.
///
/// Plain enqueues (no dedupe key, like a webhook message without an id of its own) go first,
/// in a transaction of their own, and their callers are answered before the rest of the group
/// runs: a request waiting for its acknowledgement never waits for the workers' bookkeeping
/// (stored replies, claims, completions) that happens to share its group, and no more than
/// [`REST_CHUNK`] of it that came before. Each caller has at most one write in flight, so this
/// changes no caller's order.
async fn group_commit(
    db: &Connection,
    token: &WriteToken,
    wake: &watch::Sender<u64>,
    mut rx: mpsc::Receiver<Write>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut rest = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut held = None;
    loop {
        if batch.is_empty() && rest.is_empty() {
            receive_ready(&mut rx, &mut batch);
            if batch.is_empty() {
                // Idle: the token is free for the sqlx pool's writers until writes come in.
                held = None;
                if rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await == 0 {
                    break;
                }
            }
        }
        if held.is_none() {
            match token.permit.clone().acquire_owned().await {
                Ok(p) => held = Some(p),
                Err(_) => {
                    for w in batch.drain(..).chain(rest.drain(..)) {
                        answer(w, Err(&closing()));
                    }
                    continue;
                }
            }
            // What came in while the token was away joins this group.
            receive_ready(&mut rx, &mut batch);
        }
        // Plain enqueues first, then the rest a chunk at a time; plain enqueues that come in
        // meanwhile are committed between two chunks. A caller of the sqlx pool waiting for
        // the token gets it after the current chunk; the writes left wait for its return.
        loop {
            let (plain, other): (Vec<Write>, Vec<Write>) = batch
                .drain(..)
                .partition(|w| matches!(w, Write::Enqueue(t, _) if t.dedupe_key.is_none()));
            batch = plain;
            rest.extend(other);
            let mut woke = !batch.is_empty() && commit(db, &mut batch);
            if !rest.is_empty() {
                let mut chunk: Vec<Write> = rest.drain(..rest.len().min(REST_CHUNK)).collect();
                woke |= commit(db, &mut chunk);
            }
            if woke {
                wake.send_modify(|v| *v = v.wrapping_add(1));
            }
            if rest.is_empty() || token.is_wanted() || token.permit.is_closed() {
                break;
            }
            receive_ready(&mut rx, &mut batch);
        }
        if token.is_wanted() || token.permit.is_closed() {
            held = None;
        }
    }
}

/// Move the writes already waiting in `rx` into `batch`, up to [`GROUP_COMMIT_MAX`].
fn receive_ready(rx: &mut mpsc::Receiver<Write>, batch: &mut Vec<Write>) {
    while batch.len() < GROUP_COMMIT_MAX {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
}

/// Most writes other than plain enqueues in one transaction: after each such transaction the
/// writer commits the plain enqueues that came in meanwhile, so a request waiting for its
/// acknowledgement waits for at most this much of the workers' bookkeeping.
const REST_CHUNK: usize = 64;

/// Commit `batch` (emptied) and answer its writers. Returns whether new work became claimable.
fn commit(db: &Connection, batch: &mut Vec<Write>) -> bool {
    let now = now_ms();
    let mut woke = false;
    match in_tx(db, |db| apply(db, batch, now)) {
        Ok(out) => {
            for (w, d) in batch.drain(..).zip(out) {
                woke |= answer(w, Ok(d));
            }
        }
        Err(e) if batch.len() == 1 => {
            for w in batch.drain(..) {
                woke |= answer(w, Err(&e));
            }
        }
        Err(_) => {
            for w in batch.drain(..) {
                let one = in_tx(db, |db| {
                    apply(db, std::slice::from_ref(&w), now)?
                        .pop()
                        .ok_or_else(|| StoreError::Corrupt("missing write result".into()))
                });
                woke |= match one {
                    Ok(d) => answer(w, Ok(d)),
                    Err(e) => answer(w, Err(&e)),
                };
            }
        }
    }
    woke
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer thread and the sqlx pool's writers take turns: under a steady stream of
    /// group-committed enqueues, writes that need the token still get it in turn (neither side
    /// starves, neither meets the other in SQLite's lock), and every write lands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_writers_get_the_token_while_the_writer_thread_is_busy() {
        let dir = std::env::temp_dir().join(format!("flowbot-token-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // A busy timeout this short fails any write that meets the other connection's lock.
        let store = SqliteStore::open_with(SqliteOptions {
            busy_timeout: Duration::from_millis(1),
            ..SqliteOptions::new(dir.join("flowbot.db"))
        })
        .await
        .expect("open");
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let store = store.clone();
            writers.spawn(async move {
                for i in 0..250u32 {
                    store
                        .enqueue(&NewTask::new("job", &(w, i)).expect("payload"))
                        .await
                        .expect("enqueue");
                }
            });
        }
        let kv = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..100u32 {
                    store
                        .kv_set("token", &i.to_string(), &serde_json::json!(i))
                        .await
                        .expect("kv_set");
                }
            })
        };
        let all = async {
            while let Some(r) = writers.join_next().await {
                r.expect("writer");
            }
            kv.await.expect("kv writer");
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("every writer finishes");
        let queued: i64 = store
            .count_tasks()
            .await
            .expect("count")
            .into_iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(queued, 8 * 250);
        assert_eq!(store.kv_list("token").await.expect("kv_list").len(), 100);
        store.close().await;
        let e = store
            .enqueue(&NewTask::new("job", &0u32).expect("payload"))
            .await
            .expect_err("closed");
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
