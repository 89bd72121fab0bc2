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

/// A write waiting for the group commit, with where to send its result.
pub(super) enum Write {
    Enqueue(NewTask, oneshot::Sender<Result<Enqueued, StoreError>>),
    Inbound(Box<Message>, oneshot::Sender<Result<bool, StoreError>>),
    Outbound(Box<Outbound>, oneshot::Sender<Result<(), StoreError>>),
    Complete(
        String,
        Vec<TaskId>,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
}

/// A write's result, held until its transaction commits.
enum Done {
    Enqueued(Enqueued),
    Inbound(bool),
    Unit,
    Completed(u64, bool),
}

/// Most writes committed in one transaction.
pub(super) const GROUP_COMMIT_MAX: usize = 512;

/// Run `writes` in `tx` with a few statements for the whole group: the enqueues in one, the
/// messages (inbound and outbound, in their order) in one per [`VALUES_MAX`] rows and their
/// conversations' counts in one more, then the acknowledgements in order.
async fn apply(
    tx: &mut Transaction<'static, Sqlite>,
    writes: &[Write],
    now: i64,
) -> Result<Vec<Done>, StoreError> {
    let tasks: Vec<&NewTask> = writes
        .iter()
        .filter_map(|w| {
            if let Write::Enqueue(t, _) = w {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    let mut enqueued = if tasks.is_empty() {
        Vec::new()
    } else {
        insert_tasks(tx, tasks.into_iter(), now).await?
    }
    .into_iter();
    let mut stored = insert_messages(tx, writes, now).await?.into_iter();
    let missing = || StoreError::Corrupt("missing write result".into());
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            Write::Enqueue(..) => Done::Enqueued(enqueued.next().ok_or_else(missing)?),
            Write::Inbound(..) => Done::Inbound(stored.next().ok_or_else(missing)?),
            Write::Outbound(..) => {
                stored.next().ok_or_else(missing)?;
                Done::Unit
            }
            Write::Complete(worker, ids, _) => {
                let (n, released) = complete_in(tx, worker, ids).await?;
                Done::Completed(n, released)
            }
        });
    }
    Ok(out)
}

/// A row of `flowbot_messages` from an inbound or outbound write.
struct MessageRow<'a> {
    channel: &'a str,
    conversation: &'a str,
    direction: &'static str,
    message_id: std::borrow::Cow<'a, str>,
    sender: Option<&'a str>,
    text: &'a str,
    body: String,
    at: i64,
}

impl<'a> MessageRow<'a> {
    /// The row `w` stores, if it is a message.
    fn of(w: &'a Write, now: i64) -> Result<Option<Self>, StoreError> {
        Ok(Some(match w {
            Write::Inbound(m, _) => MessageRow {
                channel: m.channel.as_str(),
                conversation: m.conversation.as_str(),
                direction: "inbound",
                message_id: m.id.as_str().into(),
                sender: Some(m.sender.id.as_str()),
                text: &m.text,
                body: message_json(m.as_ref())?,
                at: ms(m.received_at),
            },
            Write::Outbound(o, _) => {
                let target = o
                    .target
                    .as_ref()
                    .ok_or_else(|| StoreError::Invalid("outbound message has no target".into()))?;
                MessageRow {
                    channel: target.channel.as_str(),
                    conversation: target.conversation.as_str(),
                    direction: "outbound",
                    message_id: crate::new_message_id().into(),
                    sender: None,
                    text: &o.text,
                    body: message_json(o.as_ref())?,
                    at: now,
                }
            }
            Write::Enqueue(..) | Write::Complete(..) => return Ok(None),
        }))
    }
}

/// A message as stored in `body`.
fn message_json(m: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(m).map_err(|e| StoreError::Invalid(format!("message: {e}")))
}

static MESSAGE_VALUES: ValuesSql = ValuesSql::new(
    "INSERT INTO flowbot_messages (channel, conversation, direction, message_id, sender, text, body, at)",
    "(?, ?, ?, ?, ?, ?, ?, ?)",
    "",
);

static CONVERSATION_VALUES: ValuesSql = ValuesSql::new(
    "INSERT INTO flowbot_conversations (channel, conversation, started_at, last_message_at, message_count)",
    "(?, ?, ?, ?, ?)",
    "ON CONFLICT (channel, conversation) DO UPDATE SET \
     last_message_at = MAX(last_message_at, excluded.last_message_at), \
     message_count = message_count + excluded.message_count",
);

/// Store the inbound and outbound messages of `writes` in their order, and count the new ones
/// in their conversations. Returns, per message, whether it was new: an inbound message already
/// stored, or repeated earlier in `writes`, is not (and is not stored again).
///
/// No statement returns a row per message (each returned row is one more message from SQLite's
/// worker thread): the stored inbound messages are looked up first, in one statement that
/// returns only the repeats (almost always none); then the new rows go in with multi-row
/// inserts, each checked by its count of rows.
async fn insert_messages(
    tx: &mut Transaction<'static, Sqlite>,
    writes: &[Write],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut rows = Vec::new();
    for w in writes {
        rows.extend(MessageRow::of(w, now)?);
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut new = vec![true; rows.len()];
    let mut seen = std::collections::HashSet::new();
    let mut inbound = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.direction == "inbound" {
            if seen.insert((r.channel, r.message_id.as_ref())) {
                inbound.push((i, [r.channel, r.message_id.as_ref()]));
            } else {
                new[i] = false;
            }
        }
    }
    if !inbound.is_empty() {
        let keys: Vec<&[&str; 2]> = inbound.iter().map(|(_, k)| k).collect();
        let keys = serde_json::to_string(&keys).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let stored: Vec<i64> = sqlx::query_scalar(
            "SELECT j.key FROM json_each(?) j WHERE EXISTS (SELECT 1 FROM flowbot_messages m \
             WHERE m.channel = j.value ->> '$[0]' AND m.direction = 'inbound' AND m.message_id = j.value ->> '$[1]')",
        )
        .bind(keys)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
        for k in stored {
            let (i, _) = usize::try_from(k)
                .ok()
                .and_then(|k| inbound.get(k))
                .ok_or_else(|| StoreError::Corrupt(format!("no inbound message {k}")))?;
            new[*i] = false;
        }
    }
    let fresh: Vec<&MessageRow<'_>> = rows
        .iter()
        .zip(&new)
        .filter_map(|(r, n)| n.then_some(r))
        .collect();
    for chunk in fresh.chunks(VALUES_MAX) {
        let mut q = sqlx::query(MESSAGE_VALUES.rows(chunk.len()));
        for r in chunk {
            q = q
                .bind(r.channel)
                .bind(r.conversation)
                .bind(r.direction)
                .bind(r.message_id.as_ref())
                .bind(r.sender)
                .bind(r.text)
                .bind(&r.body)
                .bind(r.at);
        }
        let n = q.execute(&mut **tx).await.map_err(map_err)?.rows_affected();
        if n != chunk.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "stored {n} of {} messages",
                chunk.len()
            )));
        }
    }
    // Each conversation once: (channel, conversation, first at, last at, new messages).
    let mut counts: Vec<(&str, &str, i64, i64, i64)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in &fresh {
        match index.entry((r.channel, r.conversation)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let c: &mut (&str, &str, i64, i64, i64) = &mut counts[*e.get()];
                c.2 = c.2.min(r.at);
                c.3 = c.3.max(r.at);
                c.4 += 1;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(counts.len());
                counts.push((r.channel, r.conversation, r.at, r.at, 1));
            }
        }
    }
    for chunk in counts.chunks(VALUES_MAX) {
        let mut q = sqlx::query(CONVERSATION_VALUES.rows(chunk.len()));
        for (channel, conversation, first, last, n) in chunk {
            q = q
                .bind(*channel)
                .bind(*conversation)
                .bind(*first)
                .bind(*last)
                .bind(*n);
        }
        q.execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(new)
}

/// The tasks of `batch` when it holds nothing but enqueues without dedupe keys.
fn plain_enqueues(batch: &[Write]) -> Option<Vec<&NewTask>> {
    batch
        .iter()
        .map(|w| match w {
            Write::Enqueue(t, _) if t.dedupe_key.is_none() => Some(t),
            _ => None,
        })
        .collect()
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
        (Write::Inbound(_, tx), Ok(Done::Inbound(b))) => {
            let _ = tx.send(Ok(b));
            false
        }
        (Write::Outbound(_, tx), Ok(Done::Unit)) => {
            let _ = tx.send(Ok(()));
            false
        }
        (Write::Complete(_, _, tx), Ok(Done::Completed(n, released))) => {
            let _ = tx.send(Ok(n));
            released
        }
        (w, r) => {
            let e = match r {
                Err(e) => err(e),
                Ok(_) => StoreError::Corrupt("mismatched write result".into()),
            };
            match w {
                Write::Enqueue(_, tx) => drop(tx.send(Err(e))),
                Write::Inbound(_, tx) => drop(tx.send(Err(e))),
                Write::Outbound(_, tx) => drop(tx.send(Err(e))),
                Write::Complete(_, _, tx) => drop(tx.send(Err(e))),
            }
            false
        }
    }
}

/// Run [`group_commit`] on a thread of its own, with a single-threaded runtime. On the shared
/// runtime the loop waited its turn behind the HTTP handlers and workers that it answers, each
/// time SQLite's worker thread handed back a result; its own thread picks the result up at
/// once, and the writer's cycle (and so every write's latency) is no longer stretched by the
/// runtime's queue. The thread ends when the store, the last sender of writes, is dropped.
pub(super) fn spawn_group_commit(
    writer: SqlitePool,
    wake: watch::Sender<u64>,
    rx: mpsc::Receiver<Write>,
) -> Result<(), crate::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| {
            crate::Error::Open(format!("cannot start the SQLite writer's runtime: {e}"))
        })?;
    std::thread::Builder::new()
        .name("flowbot-sqlite-writer".into())
        .spawn(move || runtime.block_on(group_commit(writer, wake, rx)))
        .map_err(|e| crate::Error::Open(format!("cannot start the SQLite writer thread: {e}")))?;
    Ok(())
}

/// Group commit: writes from concurrent callers (webhook enqueues, messages stored by the
/// pipeline, task acknowledgements) share one transaction, and each caller is answered once
/// it is committed. Under load this turns hundreds of commits into one; an idle store commits
/// each write at once. A batch that fails is retried one write per transaction, so one bad
/// write fails alone.
///
/// Plain enqueues (no dedupe key, like a webhook message without an id of its own) go first,
/// in one statement of their own, and their callers are answered before the rest of the group
/// runs: a request waiting for its acknowledgement never waits for the workers' bookkeeping
/// (stored replies, completions) that happens to share its group. Each caller has at most one
/// write in a group, so this changes no caller's order.
async fn group_commit(writer: SqlitePool, wake: watch::Sender<u64>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut rest = Vec::with_capacity(GROUP_COMMIT_MAX);
    while rx.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        let (plain, other): (Vec<Write>, Vec<Write>) = batch
            .drain(..)
            .partition(|w| matches!(w, Write::Enqueue(t, _) if t.dedupe_key.is_none()));
        batch = plain;
        rest.extend(other);
        for group in [&mut batch, &mut rest] {
            if !group.is_empty() && commit(&writer, group).await {
                wake.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }
}

/// Commit `batch` (emptied) and answer its writers. Returns whether new work became claimable.
async fn commit(writer: &SqlitePool, batch: &mut Vec<Write>) -> bool {
    let now = now_ms();
    let all = async {
        if let Some(tasks) = plain_enqueues(batch) {
            // The common case under webhook load: one statement, atomic by itself, so no
            // BEGIN and COMMIT round trips to SQLite's worker thread.
            let mut conn = writer.acquire().await.map_err(map_err)?;
            let done = insert_bulk(&mut conn, tasks.into_iter(), now).await?;
            return Ok(done.into_iter().map(Done::Enqueued).collect());
        }
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let out = apply(&mut tx, batch, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok::<_, StoreError>(out)
    }
    .await;
    let mut woke = false;
    match all {
        Ok(out) => {
            for (w, d) in batch.drain(..).zip(out) {
                woke |= answer(w, Ok(d));
            }
        }
        Err(_) => {
            for w in batch.drain(..) {
                let one = async {
                    let mut tx = writer
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(map_err)?;
                    let mut out = apply(&mut tx, std::slice::from_ref(&w), now).await?;
                    tx.commit().await.map_err(map_err)?;
                    out.pop()
                        .ok_or_else(|| StoreError::Corrupt("missing write result".into()))
                }
                .await;
                woke |= match one {
                    Ok(d) => answer(w, Ok(d)),
                    Err(e) => answer(w, Err(&e)),
                };
            }
        }
    }
    woke
}
