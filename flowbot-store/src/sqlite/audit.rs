//! SqliteStore: the audit log.

use super::*;
use crate::audit::{AuditRow, Bounds, COLUMNS, PRUNE_BATCH, check_events, cursor_of, entry_of};
use flowbot_core::store::{AuditEntry, AuditEvent, AuditFilter, AuditStore};
use sqlx::QueryBuilder;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        check_events(events)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for e in events {
            sqlx::query(
                "INSERT INTO flowbot_audit (at, subject, role, method, route, path, resource, outcome, request_id, client, detail) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(ms(e.at))
            .bind(e.subject.as_deref())
            .bind(e.role.as_deref())
            .bind(&e.method)
            .bind(&e.route)
            .bind(&e.path)
            .bind(e.resource.as_deref())
            .bind(i64::from(e.outcome))
            .bind(&e.request_id)
            .bind(e.client.as_deref())
            .bind(e.detail.as_deref())
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let limit = page_limit(limit);
        let b = Bounds::of(filter, cursor)?;
        // Only the conditions set, so SQLite walks the time index over the range they leave.
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM flowbot_audit WHERE 1 = 1"));
        if let Some(subject) = b.subject {
            q.push(" AND subject = ").push_bind(subject);
        }
        if let Some((lo, hi)) = b.outcome {
            q.push(" AND outcome >= ").push_bind(lo);
            q.push(" AND outcome < ").push_bind(hi);
        }
        if let Some(since) = b.since {
            q.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = b.until {
            q.push(" AND at < ").push_bind(until);
        }
        if let Some(prefix) = b.route_prefix {
            q.push(" AND substr(route, 1, length(")
                .push_bind(prefix.clone())
                .push(")) = ")
                .push_bind(prefix);
        }
        if let Some((at, id)) = b.before {
            q.push(" AND (at, id) < (").push_bind(at);
            q.push(", ").push_bind(id).push(")");
        }
        q.push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows: Vec<AuditRow> = q
            .build_query_as()
            .fetch_all(self.r())
            .await
            .map_err(map_err)?;
        let items = rows
            .into_iter()
            .map(entry_of)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, cursor_of))
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            // One batch per transaction: the write token goes back to the other writers
            // between two batches.
            let mut tx = self.begin().await?;
            let n = sqlx::query(
                "DELETE FROM flowbot_audit WHERE id IN \
                 (SELECT id FROM flowbot_audit WHERE at < ? ORDER BY at, id LIMIT ?)",
            )
            .bind(ms(before))
            .bind(PRUNE_BATCH)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            tx.commit().await.map_err(map_err)?;
            total += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}
