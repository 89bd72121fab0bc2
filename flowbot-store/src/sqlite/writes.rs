//! SqliteStore's write path: the group commit that shares one transaction between
//! concurrent writers, and the background WAL checkpoints.

use super::*;
use std::time::Instant;

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
    Enqueue(
        NewTask,
        Origin,
        oneshot::Sender<Result<Enqueued, StoreError>>,
    ),
    /// Tasks enqueued together: all or none.
    Batch(
        Vec<NewTask>,
        Origin,
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
            Write::Enqueue(t, ..) if t.dedupe_key.is_none() => Some(t),
            _ => None,
        })
        .collect();
    let mut enqueued = insert_plain(db, &plain, now)?.into_iter();
    let mut stored = insert_messages(db, writes)?.into_iter();
    let missing = || StoreError::Corrupt("missing write result".into());
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            Write::Enqueue(t, ..) if t.dedupe_key.is_none() => {
                Done::Enqueued(enqueued.next().ok_or_else(missing)?)
            }
            Write::Enqueue(t, ..) => Done::Enqueued(insert_one(db, t, now)?),
            Write::Batch(tasks, ..) => Done::Batch(insert_tasks(db, tasks, now)?),
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
        (Write::Enqueue(_, _, tx), Ok(Done::Enqueued(e))) => {
            let _ = tx.send(Ok(e));
            true
        }
        (Write::Batch(_, _, tx), Ok(Done::Batch(e))) => {
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
                Write::Enqueue(_, _, tx) => drop(tx.send(Err(e))),
                Write::Batch(_, _, tx) => drop(tx.send(Err(e))),
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
    let share = WorkShare::new(options.work_share);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| {
            crate::Error::Open(format!("cannot start the SQLite writer's runtime: {e}"))
        })?;
    std::thread::Builder::new()
        .name("flowbot-sqlite-writer".into())
        .spawn(move || runtime.block_on(group_commit(&db, &token, &wake, share, rx)))
        .map_err(|e| crate::Error::Open(format!("cannot start the SQLite writer thread: {e}")))?;
    Ok(())
}

/// Whether a write is an acknowledgement someone waits for at the door: an enqueue from
/// outside the worker pools. The rest (claims, completions, stored messages, the tasks that
/// handlers enqueue) is the processing of what was accepted.
fn is_intake(w: &Write) -> bool {
    matches!(
        w,
        Write::Enqueue(_, Origin::Intake, _) | Write::Batch(_, Origin::Intake, _)
    )
}

/// Group commit: writes from concurrent callers (webhook enqueues, messages stored by the
/// pipeline, claims and acknowledgements) share one transaction, and each caller is answered
/// once it is committed. Under load this turns hundreds of commits into one; an idle store
/// commits each write at once. A group that fails is retried one write per transaction, so one
/// bad write fails alone.
///
/// Intake (enqueues) goes first, in a transaction of its own, and its callers are answered
/// before the rest of the group runs: a request waiting for its acknowledgement never waits for
/// the workers' bookkeeping (stored replies, claims, completions) that happens to share its
/// group, and no more than [`REST_CHUNK`] of it that came before. While intake floods, the
/// bookkeeping gets its [`WorkShare`] of the writer's time and waits for the rest. Each
/// caller has at most one write in flight, so this changes no caller's order.
async fn group_commit(
    db: &Connection,
    token: &WriteToken,
    wake: &watch::Sender<u64>,
    mut share: WorkShare,
    mut rx: mpsc::Receiver<Write>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut rest = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut held = None;
    let mut open = true;
    loop {
        if batch.is_empty() {
            receive_ready(&mut rx, &mut batch);
        }
        if batch.is_empty() {
            if rest.is_empty() {
                if !open {
                    break;
                }
                // Idle: the token is free for the sqlx pool's writers until writes come in.
                held = None;
                if rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await == 0 {
                    break;
                }
            } else if open && let Some(pause) = share.wait(Instant::now()) {
                // Processing waits for its share; new intake (or the pause's end) wakes it.
                held = None;
                tokio::select! {
                    n = rx.recv_many(&mut batch, GROUP_COMMIT_MAX) => open = n > 0,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
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
        // Intake first; then the rest a chunk at a time, as its share allows. Intake that
        // comes in meanwhile is committed between two chunks. A caller of the sqlx pool
        // waiting for the token gets it after the current chunk; the writes left wait for
        // its return.
        let (intake, other): (Vec<Write>, Vec<Write>) = batch.drain(..).partition(is_intake);
        batch = intake;
        rest.extend(other);
        let mut woke = false;
        if !batch.is_empty() {
            let n = batch
                .iter()
                .map(|w| match w {
                    Write::Batch(tasks, ..) => tasks.len(),
                    _ => 1,
                })
                .sum();
            woke |= commit(db, &mut batch);
            share.intake(n, Instant::now());
        }
        if !rest.is_empty() && (!open || share.wait(Instant::now()).is_none()) {
            let mut chunk: Vec<Write> = rest.drain(..rest.len().min(REST_CHUNK)).collect();
            let started = Instant::now();
            woke |= commit(db, &mut chunk);
            let now = Instant::now();
            share.spent(now - started, now);
        }
        if woke {
            wake.send_modify(|v| *v = v.wrapping_add(1));
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
