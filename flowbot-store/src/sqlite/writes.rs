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

/// Where an enqueue comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// From outside the worker pools, like a webhook or API request, which answers only once
    /// its task is committed.
    Intake,
    /// From a task handler: part of processing, like a reply queued for another try.
    Processing,
}

impl Origin {
    /// The origin of an enqueue made by the calling task.
    pub(super) fn of_caller() -> Self {
        if flowbot_core::task::in_task_handler() {
            Origin::Processing
        } else {
            Origin::Intake
        }
    }
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

/// Intake first, while it floods: how much of the writer's time the processing writes may
/// take while enqueues keep coming fast. Intake floods once [`INTAKE_FLOOD`] enqueues are
/// committed within [`INTAKE_WINDOW`], and counts as flooding until a window after that; a
/// trickle of enqueues never holds processing back. While intake floods, processing runs on a
/// credit that grows by `share` of the time passing (up to [`WORK_BURST`]) and shrinks by the
/// time its transactions take, and waits while the credit is spent. Otherwise processing has
/// the writer to itself.
struct WorkShare {
    share: f64,
    credit: f64,
    last: Instant,
    window_start: Instant,
    window_count: usize,
    flood_until: Option<Instant>,
}

/// The window over which intake is counted.
const INTAKE_WINDOW: Duration = Duration::from_millis(20);

/// Enqueues within one window that make intake a flood (1,000 a second).
const INTAKE_FLOOD: usize = 20;

/// Most writer time, in seconds, that processing may bank while intake floods.
const WORK_BURST: f64 = 0.002;

impl WorkShare {
    fn new(share: f64) -> Self {
        let now = Instant::now();
        WorkShare {
            share: share.clamp(0.01, 1.0),
            credit: WORK_BURST,
            last: now,
            window_start: now,
            window_count: 0,
            flood_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let passed = now.saturating_duration_since(self.last).as_secs_f64();
        self.credit = (self.credit + passed * self.share).min(WORK_BURST);
        self.last = now;
    }

    fn flooding(&self, now: Instant) -> bool {
        self.share < 1.0 && self.flood_until.is_some_and(|t| now < t)
    }

    /// How long processing must wait before its next transaction; `None`: it may go now.
    fn wait(&mut self, now: Instant) -> Option<Duration> {
        self.refill(now);
        if !self.flooding(now) || self.credit >= 0.0 {
            return None;
        }
        let refilled = Duration::from_secs_f64(-self.credit / self.share);
        let ebb = self
            .flood_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        Some(refilled.min(ebb).max(Duration::from_micros(50)))
    }

    /// `n` enqueues from outside were committed at `at`.
    fn intake(&mut self, n: usize, at: Instant) {
        if at.saturating_duration_since(self.window_start) >= INTAKE_WINDOW {
            self.window_start = at;
            self.window_count = 0;
        }
        self.window_count += n;
        if self.window_count >= INTAKE_FLOOD {
            self.flood_until = Some(at + INTAKE_WINDOW);
        }
    }

    fn spent(&mut self, took: Duration, now: Instant) {
        self.refill(now);
        if self.flooding(now) {
            self.credit -= took.as_secs_f64();
        } else {
            self.credit = WORK_BURST;
        }
    }
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
            let deferred = if rest.is_empty() || !open {
                None
            } else {
                share.wait(Instant::now())
            };
            if rest.is_empty() {
                if !open {
                    break;
                }
                // Idle: the token is free for the sqlx pool's writers until writes come in.
                held = None;
                if rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await == 0 {
                    break;
                }
            } else if let Some(pause) = deferred {
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

    /// Processing waits only while intake floods and its credit is spent, never longer than
    /// until the credit is back or the flood has ebbed; a trickle of intake or a share of 1
    /// never holds it back.
    #[test]
    fn work_share_defers_processing_only_while_intake_floods() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut share = WorkShare::new(0.1);
        assert_eq!(share.wait(t0), None, "no intake: processing goes at once");
        share.spent(ms(5), t0);
        assert_eq!(
            share.wait(t0),
            None,
            "time spent without intake is not counted"
        );
        share.intake(INTAKE_FLOOD - 1, t0);
        share.spent(ms(5), t0);
        assert_eq!(share.wait(t0), None, "a trickle of intake does not count");
        share.intake(1, t0);
        share.spent(ms(5), t0);
        // Credit 2 ms - 5 ms = -3 ms, back at 0.1 s per s in 30 ms; the flood ebbs in 20 ms.
        assert_eq!(share.wait(t0), Some(ms(20)));
        // 10 ms on: credit -2 ms (20 ms to refill), the flood ebbs in 10 ms.
        assert_eq!(share.wait(t0 + ms(10)), Some(ms(10)));
        // The next window floods again.
        share.intake(INTAKE_FLOOD, t0 + ms(25));
        // Credit -2 ms + 1.5 ms = -0.5 ms: 5 ms to refill.
        let near = |d: Option<Duration>, want: Duration| {
            d.is_some_and(|d| d.abs_diff(want) < Duration::from_micros(1))
        };
        assert!(near(share.wait(t0 + ms(25)), ms(5)));
        // The flood ebbed: processing goes.
        assert_eq!(share.wait(t0 + ms(46)), None);
        // A small overdraft waits for its refill alone.
        let mut share = WorkShare::new(0.5);
        share.intake(INTAKE_FLOOD, t0);
        share.spent(ms(3), t0);
        assert!(near(share.wait(t0), ms(2)));
        let mut share = WorkShare::new(1.0);
        share.intake(INTAKE_FLOOD, t0);
        share.spent(ms(100), t0);
        assert_eq!(share.wait(t0), None, "share 1: intake has no priority");
    }

    /// Under a steady stream of enqueues, claims and completions still get their share: the
    /// stream does not starve processing, and every task claimed is completed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processing_keeps_its_share_under_steady_intake() {
        let dir = std::env::temp_dir().join(format!("flowbot-share-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = SqliteStore::open_with(SqliteOptions {
            work_share: 0.05,
            ..SqliteOptions::new(dir.join("flowbot.db"))
        })
        .await
        .expect("open");
        let stop = CancellationToken::new();
        let mut intake = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (store, stop) = (store.clone(), stop.clone());
            intake.spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    store
                        .enqueue(&NewTask::new("job", &(w, n)).expect("payload"))
                        .await
                        .expect("enqueue");
                    n += 1;
                }
                n
            });
        }
        let kinds = vec!["job".to_owned()];
        let mut done = 0u64;
        let processing = async {
            while done < 500 {
                let claimed = store
                    .claim(&ClaimRequest {
                        worker: "w",
                        queue: flowbot_core::task::DEFAULT_QUEUE,
                        kinds: &kinds,
                        limit: 10,
                        lease: Duration::from_secs(30),
                    })
                    .await
                    .expect("claim");
                let ids: Vec<TaskId> = claimed.iter().map(|t| t.id).collect();
                done += store.complete("w", &ids).await.expect("complete");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), processing)
            .await
            .expect("500 tasks processed while the intake never stopped");
        stop.cancel();
        let mut enqueued = 0;
        while let Some(n) = intake.join_next().await {
            enqueued += n.expect("enqueuer");
        }
        let counts = store.count_tasks().await.expect("count");
        let of = |s: TaskState| counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
        assert!(done >= 500);
        assert_eq!(of(TaskState::Done), i64::try_from(done).expect("count"));
        assert_eq!(
            i64::try_from(enqueued).expect("count"),
            of(TaskState::Done) + of(TaskState::Queued)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
