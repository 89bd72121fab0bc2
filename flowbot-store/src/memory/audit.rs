//! MemoryStore: the audit log.

use std::collections::BTreeMap;
use std::ops::Bound;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use flowbot_core::store::{AuditEntry, AuditEvent, AuditFilter, AuditStore, Page};

use super::{MemoryStore, fetch};
use crate::audit::{Bounds, PRUNE_BATCH, check_events, cursor_of};
use crate::common::{from_ms, ms, page_limit, paginate};

/// An entry's place: (time in milliseconds, id).
type Key = (i64, i64);

/// The entries by [`Key`], so newest first is the reverse order.
#[derive(Debug, Default)]
pub(super) struct AuditLog {
    entries: BTreeMap<Key, AuditEvent>,
    last_id: i64,
}

impl Bounds {
    /// Whether an entry matches the filter's conditions other than time and cursor, which
    /// [`Bounds::range`] applies.
    fn keeps(&self, e: &AuditEvent) -> bool {
        self.subject
            .as_ref()
            .is_none_or(|s| e.subject.as_ref() == Some(s))
            && self.outcome.is_none_or(|(lo, hi)| {
                let o = i64::from(e.outcome);
                lo <= o && o < hi
            })
            && self
                .route_prefix
                .as_ref()
                .is_none_or(|p| e.route.starts_with(p.as_str()))
    }

    /// The (time, id) range of the entries the filter's times and the cursor leave.
    fn range(&self) -> (Bound<Key>, Bound<Key>) {
        let start = self
            .since
            .map_or(Bound::Unbounded, |s| Bound::Included((s, i64::MIN)));
        let until = self.until.map(|u| (u, i64::MIN));
        let end = match (until, self.before) {
            (Some(u), Some(b)) => Bound::Excluded(u.min(b)),
            (Some(x), None) | (None, Some(x)) => Bound::Excluded(x),
            (None, None) => Bound::Unbounded,
        };
        (start, end)
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        check_events(events)?;
        let mut log = self.audit();
        for e in events {
            log.last_id += 1;
            let at = ms(e.at);
            let stored = AuditEvent {
                at: from_ms(at),
                ..e.clone()
            };
            let id = log.last_id;
            log.entries.insert((at, id), stored);
        }
        Ok(())
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let limit = page_limit(limit);
        let b = Bounds::of(filter, cursor)?;
        let (start, end) = b.range();
        let log = self.audit();
        // A range whose start is past its end is empty, not a panic.
        let empty = match (&start, &end) {
            (Bound::Included(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        };
        let items = if empty {
            Vec::new()
        } else {
            log.entries
                .range((start, end))
                .rev()
                .filter(|(_, e)| b.keeps(e))
                .take(fetch(limit))
                .map(|(&(_, id), e)| AuditEntry {
                    id,
                    event: e.clone(),
                })
                .collect()
        };
        Ok(paginate(items, limit, cursor_of))
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = ms(before);
        let batch = usize::try_from(PRUNE_BATCH).unwrap_or(usize::MAX);
        let mut total = 0u64;
        loop {
            // One batch at a time, so a large prune never holds the log for long.
            let mut log = self.audit();
            let old: Vec<Key> = log
                .entries
                .range(..(before, i64::MIN))
                .take(batch)
                .map(|(k, _)| *k)
                .collect();
            for k in &old {
                log.entries.remove(k);
            }
            drop(log);
            total += old.len() as u64;
            if old.len() < batch {
                return Ok(total);
            }
        }
    }
}
