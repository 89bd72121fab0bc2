//! The indexes of MemoryStore's task table: what a claim, a dedupe check and a lease
//! recovery search by, kept in step with every change of a row (see `Tasks::update`).

use std::collections::{BTreeSet, HashMap};

use flowbot_core::task::TaskState;

use super::tasks::TaskRow;

/// Queued or running: a task that holds its dedupe key and keeps its place in its
/// concurrency key's order.
fn live(state: TaskState) -> bool {
    matches!(state, TaskState::Queued | TaskState::Running)
}

/// What the task table is searched by, kept in step with every change of a row.
#[derive(Debug, Default)]
pub(super) struct Indexes {
    /// Queued tasks per queue, in claim order: (priority, run_at, id).
    pub(super) queued: HashMap<String, BTreeSet<(i16, i64, i64)>>,
    /// Running tasks.
    pub(super) running: BTreeSet<i64>,
    /// The live task of each dedupe key.
    pub(super) dedupe: HashMap<String, i64>,
    /// The live tasks of each concurrency key, oldest first.
    pub(super) keyed: HashMap<String, BTreeSet<i64>>,
}

impl Indexes {
    pub(super) fn add(&mut self, r: &TaskRow) {
        match r.state {
            TaskState::Queued => {
                self.queued
                    .entry(r.queue.clone())
                    .or_default()
                    .insert((r.priority, r.run_at, r.id));
            }
            TaskState::Running => {
                self.running.insert(r.id);
            }
            _ => {}
        }
        if live(r.state) {
            if let Some(k) = &r.dedupe_key {
                self.dedupe.insert(k.clone(), r.id);
            }
            if let Some(k) = &r.concurrency_key {
                self.keyed.entry(k.clone()).or_default().insert(r.id);
            }
        }
    }

    pub(super) fn remove(&mut self, r: &TaskRow) {
        match r.state {
            TaskState::Queued => {
                if let Some(q) = self.queued.get_mut(&r.queue) {
                    q.remove(&(r.priority, r.run_at, r.id));
                    if q.is_empty() {
                        self.queued.remove(&r.queue);
                    }
                }
            }
            TaskState::Running => {
                self.running.remove(&r.id);
            }
            _ => {}
        }
        if live(r.state) {
            if let Some(k) = &r.dedupe_key
                && self.dedupe.get(k) == Some(&r.id)
            {
                self.dedupe.remove(k);
            }
            if let Some(k) = &r.concurrency_key
                && let Some(ids) = self.keyed.get_mut(k)
            {
                ids.remove(&r.id);
                if ids.is_empty() {
                    self.keyed.remove(k);
                }
            }
        }
    }
}
