//! MemoryStore: task administration (listing, cancel, dead letters, purge) and schedules.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use flowbot_core::store::Page;
use flowbot_core::task::{
    DeadLetter, FireOutcome, NewTask, ScheduleDef, ScheduleState, ScheduleStore, TaskAdmin,
    TaskFilter, TaskId, TaskRecord, TaskState,
};
use serde_json::Value;

use super::{MemoryStore, fetch};
use crate::common::{self, from_ms, ms, now_ms, page_limit, paginate};

/// A stored schedule.
#[derive(Debug, Clone)]
struct ScheduleRow {
    def: ScheduleDef,
    next_fire_at: i64,
    last_fire_at: Option<i64>,
    paused: bool,
}

impl ScheduleRow {
    fn state(&self) -> ScheduleState {
        ScheduleState {
            def: self.def.clone(),
            next_fire_at: from_ms(self.next_fire_at),
            last_fire_at: self.last_fire_at.map(from_ms),
            paused: self.paused,
        }
    }
}

/// The schedules by name, and the fires recorded (schedule, fire time): a fire is recorded
/// once, whoever fires it, and the record outlives its schedule as the other backends' does.
#[derive(Debug, Default)]
pub(super) struct Schedules {
    by_name: BTreeMap<String, ScheduleRow>,
    fires: HashSet<(String, i64)>,
}

#[async_trait]
impl TaskAdmin for MemoryStore {
    async fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.queue()
            .tasks
            .get(id.0)
            .map(super::tasks::TaskRow::record)
            .transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Page<TaskRecord>, StoreError> {
        let limit = page_limit(f.limit);
        let before = common::int_cursor(f.cursor.as_deref())?.unwrap_or(i64::MAX);
        let q = self.queue();
        let rows = q
            .tasks
            .rows()
            .range(..before)
            .rev()
            .map(|(_, r)| r)
            .filter(|r| {
                f.state.is_none_or(|s| r.state == s)
                    && f.kind.as_ref().is_none_or(|k| &r.kind == k)
                    && f.queue.as_ref().is_none_or(|queue| &r.queue == queue)
            })
            .take(fetch(limit))
            .map(super::tasks::TaskRow::record)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(rows, limit, common::record_of))
    }

    async fn cancel_task(&self, id: TaskId) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut q = self.queue();
        if !q
            .tasks
            .get(id.0)
            .is_some_and(|r| r.state == TaskState::Queued)
        {
            return Ok(false);
        }
        q.tasks.update(id.0, |r| {
            r.state = TaskState::Cancelled;
            r.finished_at = Some(now);
        });
        Ok(true)
    }

    async fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<DeadLetter>, StoreError> {
        let limit = page_limit(limit);
        let before = common::int_cursor(cursor)?.unwrap_or(i64::MAX);
        let q = self.queue();
        let letters = q
            .tasks
            .dead_letters()
            .range(..before)
            .rev()
            .filter_map(|(id, (reason, died_at))| {
                let task = q.tasks.get(*id)?;
                Some(task.record().map(|task| DeadLetter {
                    task,
                    reason: reason.clone(),
                    died_at: from_ms(*died_at),
                    errors: q.tasks.errors_of(*id),
                }))
            })
            .take(fetch(limit))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(letters, limit, |d| Value::from(d.task.id.0)))
    }

    async fn requeue_dead(&self, id: TaskId) -> Result<bool, StoreError> {
        let requeued = self.queue().tasks.requeue_dead(id.0, now_ms())?;
        self.wake_if(requeued);
        Ok(requeued)
    }

    async fn count_tasks(&self) -> Result<Vec<(TaskState, i64)>, StoreError> {
        let q = self.queue();
        let mut counts: BTreeMap<&'static str, (TaskState, i64)> = BTreeMap::new();
        for r in q.tasks.rows().values() {
            counts.entry(r.state.as_str()).or_insert((r.state, 0)).1 += 1;
        }
        Ok(counts.into_values().collect())
    }

    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = ms(before);
        let mut q = self.queue();
        let ids: Vec<i64> = q
            .tasks
            .rows()
            .values()
            .filter(|r| {
                matches!(r.state, TaskState::Done | TaskState::Cancelled)
                    && r.finished_at.is_some_and(|f| f < before)
            })
            .map(|r| r.id)
            .collect();
        for &id in &ids {
            q.tasks.delete(id);
        }
        Ok(ids.len() as u64)
    }
}

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn upsert_schedule(
        &self,
        d: &ScheduleDef,
        next_fire_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut q = self.queue();
        match q.schedules.by_name.get_mut(&d.name) {
            Some(row) => {
                // The same timing keeps its progress (a restart registering it again).
                if row.def.cron != d.cron || row.def.timezone != d.timezone {
                    row.next_fire_at = ms(next_fire_at);
                }
                row.def = d.clone();
            }
            None => {
                q.schedules.by_name.insert(
                    d.name.clone(),
                    ScheduleRow {
                        def: d.clone(),
                        next_fire_at: ms(next_fire_at),
                        last_fire_at: None,
                        paused: false,
                    },
                );
            }
        }
        Ok(())
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError> {
        Ok(self
            .queue()
            .schedules
            .by_name
            .get(name)
            .map(ScheduleRow::state))
    }

    async fn list_schedules(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<ScheduleState>, StoreError> {
        let limit = page_limit(limit);
        let after = common::str_cursor(cursor)?;
        let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let q = self.queue();
        let states = q
            .schedules
            .by_name
            .range::<str, _>((start, Bound::Unbounded))
            .take(fetch(limit))
            .map(|(_, row)| row.state())
            .collect();
        Ok(paginate(states, limit, |s| Value::from(s.def.name.clone())))
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_fire_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut q = self.queue();
        let Some(row) = q.schedules.by_name.get_mut(name) else {
            return Ok(false);
        };
        row.paused = paused;
        if !paused {
            row.next_fire_at = ms(next_fire_at);
        }
        Ok(true)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.queue().schedules.by_name.remove(name).is_some())
    }

    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<ScheduleState>, StoreError> {
        let now = ms(now);
        let q = self.queue();
        let mut due: Vec<&ScheduleRow> = q
            .schedules
            .by_name
            .values()
            .filter(|r| !r.paused && r.next_fire_at <= now)
            .collect();
        due.sort_by_key(|r| r.next_fire_at);
        let limit = usize::try_from(page_limit(limit)).unwrap_or(usize::MAX);
        Ok(due
            .into_iter()
            .take(limit)
            .map(ScheduleRow::state)
            .collect())
    }

    async fn fire_schedule(
        &self,
        name: &str,
        fire_at: DateTime<Utc>,
        next_fire_at: DateTime<Utc>,
        task: Option<&NewTask>,
    ) -> Result<FireOutcome, StoreError> {
        let now = now_ms();
        let fire_at = ms(fire_at);
        let outcome = {
            let mut q = self.queue();
            let mut outcome = FireOutcome::Advanced;
            if let Some(task) = task {
                outcome = FireOutcome::AlreadyFired;
                if q.schedules.fires.insert((name.to_owned(), fire_at)) {
                    q.tasks.insert(task, now);
                    outcome = FireOutcome::Fired;
                }
            }
            if let Some(row) = q.schedules.by_name.get_mut(name) {
                // Never backward, whatever order the agents come in.
                row.next_fire_at = row.next_fire_at.max(ms(next_fire_at));
                if outcome == FireOutcome::Fired {
                    row.last_fire_at = Some(row.last_fire_at.unwrap_or(0).max(fire_at));
                }
            }
            outcome
        };
        self.wake_if(outcome == FireOutcome::Fired);
        Ok(outcome)
    }
}
