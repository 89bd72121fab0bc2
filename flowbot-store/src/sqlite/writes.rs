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

/// Run `writes` in `tx`: enqueues first, in one statement, then the rest in order.
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
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        out.push(match w {
            Write::Enqueue(..) => Done::Enqueued(
                enqueued
                    .next()
                    .ok_or_else(|| StoreError::Corrupt("missing enqueue result".into()))?,
            ),
            Write::Inbound(m, _) => Done::Inbound(inbound_in(tx, m).await?),
            Write::Outbound(o, _) => {
                outbound_in(tx, o).await?;
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
pub(super) async fn group_commit(
    writer: SqlitePool,
    wake: watch::Sender<u64>,
    mut rx: mpsc::Receiver<Write>,
) {
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
