//! The third-party store of `src/store.rs` ([`Timed`] over the in-memory store) against the
//! published conformance suite of flowbot-store: one test per behaviour.

use std::sync::Arc;

use flowbot_core::Store;
use flowbot_examples::store::Timed;
use flowbot_store::MemoryStore;
use flowbot_store::conformance::Backend;

/// A fresh in-memory database per test, timed.
struct TimedMemory(Timed<MemoryStore>);

impl Backend for TimedMemory {
    async fn open() -> Option<Self> {
        Some(TimedMemory(Timed::new(MemoryStore::new())))
    }
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.0.clone())
    }
    async fn second_store(&self) -> Arc<dyn Store> {
        // A clone of the in-memory store is another connection to its database.
        Arc::new(self.0.clone())
    }
}

flowbot_store::conformance_tests!(TimedMemory);

/// The wrapper counted the calls it passed on.
#[tokio::test]
async fn the_calls_are_counted() {
    let store = Timed::new(MemoryStore::new());
    let stats = store.stats();
    let shared: Arc<dyn Store> = Arc::new(store);
    shared.ping().await.expect("ping");
    shared
        .kv_set("a", "b", &serde_json::json!(1))
        .await
        .expect("set");
    shared.kv_get("a", "b").await.expect("get");
    assert_eq!((stats.calls("kv_set"), stats.calls("kv_get")), (1, 1));
    assert!(
        stats
            .snapshot()
            .iter()
            .any(|(name, n, _)| *name == "ping" && *n == 1)
    );
}
