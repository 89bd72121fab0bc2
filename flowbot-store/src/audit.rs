//! The audit log's code shared by the backends: checking events and filters, cursors, rows.

use flowbot_core::StoreError;
use flowbot_core::store::{AuditEntry, AuditEvent, AuditFilter};
use serde_json::Value;

use crate::common::{self, from_ms, ms};

/// Most entries one prune transaction removes.
pub(crate) const PRUNE_BATCH: i64 = 1000;

/// Columns of an audit row, in the order [`AuditRow`] holds them.
pub(crate) const COLUMNS: &str =
    "id, at, subject, role, method, route, path, resource, outcome, request_id, client, detail";

/// A row of `flowbot_audit`, as selected with [`COLUMNS`].
pub(crate) type AuditRow = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    i64,
    String,
    Option<String>,
    Option<String>,
);

/// Refuse a batch holding an event no store keeps as given: an outcome that is not an HTTP
/// status, or a NUL character (PostgreSQL's text cannot hold one).
pub(crate) fn check_events(events: &[AuditEvent]) -> Result<(), StoreError> {
    for (i, e) in events.iter().enumerate() {
        if !(100..=599).contains(&e.outcome) {
            return Err(StoreError::Invalid(format!(
                "audit event {i}: outcome {} is not an HTTP status (100 to 599)",
                e.outcome
            )));
        }
        let fields = [
            ("subject", e.subject.as_deref()),
            ("role", e.role.as_deref()),
            ("method", Some(e.method.as_str())),
            ("route", Some(e.route.as_str())),
            ("path", Some(e.path.as_str())),
            ("resource", e.resource.as_deref()),
            ("request_id", Some(e.request_id.as_str())),
            ("client", e.client.as_deref()),
            ("detail", e.detail.as_deref()),
        ];
        if let Some((name, _)) = fields
            .iter()
            .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
        {
            return Err(StoreError::Invalid(format!(
                "audit event {i}: {name} contains a NUL character"
            )));
        }
    }
    Ok(())
}

/// A filter's bounds as bound into the listing query.
pub(crate) struct Bounds {
    pub(crate) subject: Option<String>,
    /// Outcomes from `lo` to before `hi`.
    pub(crate) outcome: Option<(i64, i64)>,
    pub(crate) since: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) route_prefix: Option<String>,
    /// The entry the previous page ended with: (time, id).
    pub(crate) before: Option<(i64, i64)>,
}

impl Bounds {
    /// Check `filter` and `cursor` and turn them into bounds.
    pub(crate) fn of(filter: &AuditFilter, cursor: Option<&str>) -> Result<Self, StoreError> {
        let outcome = filter
            .outcome
            .map(|o| {
                o.range()
                    .map(|(lo, hi)| (i64::from(lo), i64::from(hi)))
                    .ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "audit filter: outcome {o:?} is not a status class (1 to 5) or an HTTP status (100 to 599)"
                        ))
                    })
            })
            .transpose()?;
        Ok(Bounds {
            subject: filter.subject.clone(),
            outcome,
            since: filter.since.map(ms),
            until: filter.until.map(ms),
            route_prefix: filter.route_prefix.clone().filter(|p| !p.is_empty()),
            before: cursor.map(parse_cursor).transpose()?,
        })
    }
}

fn parse_cursor(c: &str) -> Result<(i64, i64), StoreError> {
    let v = common::decode_cursor(c)?;
    match (
        v.get(0).and_then(Value::as_i64),
        v.get(1).and_then(Value::as_i64),
    ) {
        (Some(at), Some(id)) if v.as_array().is_some_and(|a| a.len() == 2) => Ok((at, id)),
        _ => Err(StoreError::Invalid(format!(
            "malformed cursor '{}'",
            c.chars().take(64).collect::<String>()
        ))),
    }
}

/// The cursor of the page that ends with `e`.
pub(crate) fn cursor_of(e: &AuditEntry) -> Value {
    serde_json::json!([ms(e.event.at), e.id])
}

/// An entry from its row.
pub(crate) fn entry_of(row: AuditRow) -> Result<AuditEntry, StoreError> {
    let (id, at, subject, role, method, route, path, resource, outcome, request_id, client, detail) =
        row;
    let outcome = u16::try_from(outcome)
        .map_err(|_| StoreError::Corrupt(format!("audit entry {id}: outcome {outcome}")))?;
    Ok(AuditEntry {
        id,
        event: AuditEvent {
            at: from_ms(at),
            subject,
            role,
            method,
            route,
            path,
            resource,
            outcome,
            request_id,
            client,
            detail,
        },
    })
}
