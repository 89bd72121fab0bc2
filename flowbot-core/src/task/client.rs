//! Enqueueing from application code: [`TaskClient`] checks a task before it reaches the
//! queue.

use std::collections::HashSet;
use std::sync::Arc;

use super::queue::TaskQueue;
use super::types::*;
use super::worker::TaskRegistry;
use crate::error::{Error, Result};

/// Enqueues tasks after checking them: payload size, retry policy, and (when the client knows
/// the registered kinds) that a handler exists for the kind.
#[derive(Clone)]
pub struct TaskClient {
    queue: Arc<dyn TaskQueue>,
    known_kinds: Option<Arc<HashSet<String>>>,
    max_payload_bytes: usize,
}

impl std::fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskClient")
            .field("known_kinds", &self.known_kinds)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

impl TaskClient {
    /// A client for `queue` that accepts any kind (agents elsewhere may handle it).
    pub fn new(queue: Arc<dyn TaskQueue>) -> Self {
        TaskClient {
            queue,
            known_kinds: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Reject kinds that `registry` does not handle with [`Error::UnknownTaskKind`].
    pub fn only_kinds_of(mut self, registry: &TaskRegistry) -> Self {
        self.known_kinds = Some(Arc::new(registry.kinds().map(str::to_owned).collect()));
        self
    }

    /// Reject payloads larger than `bytes` (default [`DEFAULT_MAX_PAYLOAD_BYTES`]).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    fn check(&self, task: &NewTask) -> Result<()> {
        task.validate(self.max_payload_bytes)?;
        if let Some(known) = &self.known_kinds
            && !known.contains(&task.kind)
        {
            return Err(Error::UnknownTaskKind(task.kind.clone()));
        }
        Ok(())
    }

    /// Check and enqueue one task.
    pub async fn enqueue(&self, task: NewTask) -> Result<Enqueued> {
        self.check(&task)?;
        Ok(self.queue.enqueue(&task).await?)
    }

    /// Check every task, then enqueue them all in one transaction.
    pub async fn enqueue_batch(&self, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        for task in tasks {
            self.check(task)?;
        }
        Ok(self.queue.enqueue_batch(tasks).await?)
    }

    /// The underlying queue.
    pub fn queue(&self) -> &Arc<dyn TaskQueue> {
        &self.queue
    }
}
