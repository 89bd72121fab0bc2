//! The write token: whose turn it is to write, the writer thread's or the sqlx pool's.

use super::*;

/// The right to write. SQLite lets one connection write at a time, and two write here: the
/// writer thread's own, for the hot writes (enqueues, messages, claims, completions), and the
/// sqlx writer pool's, for everything else. Whoever writes holds the token, so the two never
/// meet in SQLite's lock (whose busy handler sleeps a millisecond or more). The writer thread
/// holds the token while it has writes to do, and hands it over between two transactions when
/// someone waits for it; idle, it leaves the token free.
pub(super) struct WriteToken {
    pub(super) permit: Arc<tokio::sync::Semaphore>,
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

pub(super) fn closing() -> StoreError {
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

    pub(super) fn is_wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Refuse the token from now on: every later write fails as the store closing.
    pub(super) fn close(&self) {
        self.permit.close();
    }
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
