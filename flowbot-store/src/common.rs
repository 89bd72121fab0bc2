//! Helpers shared by the backends: time and cursor encoding, error mapping, row decoding.

use chrono::{DateTime, TimeZone, Utc};
use flowbot_core::StoreError;
use flowbot_core::task::{RetryPolicy, TaskRecord, TaskState};
use serde_json::Value;

/// Largest page any listing returns.
pub(crate) const MAX_PAGE: u32 = 1000;

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn now_ms() -> i64 {
    flowbot_core::clock::now().timestamp_millis()
}

/// Milliseconds in `ttl`, for expiry times.
pub(crate) fn ttl_ms(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(crate) fn lease_deadline(lease: std::time::Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

/// Page size: at least 1, at most [`MAX_PAGE`].
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_PAGE))
}

/// Cursors are opaque to clients: the hex of a small JSON value.
pub(crate) fn encode_cursor(v: &Value) -> String {
    v.to_string().bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_cursor(s: &str) -> Result<Value, StoreError> {
    let bad = || StoreError::Invalid(format!("malformed cursor '{}'", truncate(s, 64)));
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return Err(bad());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// A cursor holding one integer (an id or sequence number).
pub(crate) fn int_cursor(cursor: Option<&str>) -> Result<Option<i64>, StoreError> {
    cursor
        .map(|c| {
            decode_cursor(c)?.as_i64().ok_or_else(|| {
                StoreError::Invalid(format!("malformed cursor '{}'", truncate(c, 64)))
            })
        })
        .transpose()
}

/// A cursor holding one string (a name).
pub(crate) fn str_cursor(cursor: Option<&str>) -> Result<Option<String>, StoreError> {
    cursor
        .map(|c| match decode_cursor(c)? {
            Value::String(s) => Ok(s),
            _ => Err(StoreError::Invalid(format!(
                "malformed cursor '{}'",
                truncate(c, 64)
            ))),
        })
        .transpose()
}

/// Split one extra row off a page fetched with `limit + 1` and make the next cursor from the
/// last row kept.
pub(crate) fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> Value,
) -> flowbot_core::store::Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(&cursor_of(r)))
    } else {
        None
    };
    flowbot_core::store::Page {
        items: rows,
        next_cursor,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub(crate) fn retry_json(policy: Option<&RetryPolicy>) -> Result<Option<String>, StoreError> {
    policy
        .map(|p| {
            serde_json::to_string(p).map_err(|e| StoreError::Invalid(format!("retry policy: {e}")))
        })
        .transpose()
}

pub(crate) fn parse_retry(s: Option<String>) -> Result<Option<RetryPolicy>, StoreError> {
    s.map(|s| {
        serde_json::from_str(&s)
            .map_err(|e| StoreError::Corrupt(format!("retry policy '{s}': {e}")))
    })
    .transpose()
}

pub(crate) fn parse_state(s: &str) -> Result<TaskState, StoreError> {
    TaskState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown task state '{s}'")))
}

pub(crate) fn parse_json(s: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn u32_of(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Columns of a task record, in the order [`task_record!`] reads them.
pub(crate) const TASK_COLUMNS: &str = "id, queue, kind, state, payload, attempts, priority, run_at, created_at, \
     finished_at, last_error, dedupe_key, concurrency_key, lease_owner";

/// Columns of a claimed task, in the order [`claimed_task!`] reads them. (SQLite claims on
/// its writer thread, which reads its rows itself.)
#[cfg(feature = "postgres")]
pub(crate) const CLAIM_COLUMNS: &str =
    "id, queue, kind, payload, attempts, retry, dedupe_key, concurrency_key, created_at, run_at";

/// Decode a row selected with [`TASK_COLUMNS`] into a [`TaskRecord`].
macro_rules! task_record {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let state: String = row.try_get(3).map_err(crate::common::decode_err)?;
        let payload: String = row.try_get(4).map_err(crate::common::decode_err)?;
        let priority: i64 = row.try_get(6).map_err(crate::common::decode_err)?;
        Ok::<_, flowbot_core::StoreError>(flowbot_core::task::TaskRecord {
            id: flowbot_core::task::TaskId(row.try_get(0).map_err(crate::common::decode_err)?),
            queue: row.try_get(1).map_err(crate::common::decode_err)?,
            kind: row.try_get(2).map_err(crate::common::decode_err)?,
            state: crate::common::parse_state(&state)?,
            payload: crate::common::parse_json(&payload, "task payload")?,
            attempts: crate::common::u32_of(row.try_get(5).map_err(crate::common::decode_err)?),
            priority: i16::try_from(priority).unwrap_or(0),
            run_at: crate::common::from_ms(row.try_get(7).map_err(crate::common::decode_err)?),
            created_at: crate::common::from_ms(row.try_get(8).map_err(crate::common::decode_err)?),
            finished_at: row
                .try_get::<Option<i64>, _>(9)
                .map_err(crate::common::decode_err)?
                .map(crate::common::from_ms),
            last_error: row.try_get(10).map_err(crate::common::decode_err)?,
            dedupe_key: row.try_get(11).map_err(crate::common::decode_err)?,
            concurrency_key: row.try_get(12).map_err(crate::common::decode_err)?,
            lease_owner: row.try_get(13).map_err(crate::common::decode_err)?,
        })
    }};
}
pub(crate) use task_record;

/// Decode a row selected with [`CLAIM_COLUMNS`] into a [`ClaimedTask`](flowbot_core::task::ClaimedTask).
#[cfg(feature = "postgres")]
macro_rules! claimed_task {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        Ok::<_, flowbot_core::StoreError>(flowbot_core::task::ClaimedTask {
            id: flowbot_core::task::TaskId(row.try_get(0).map_err(crate::common::decode_err)?),
            queue: row.try_get(1).map_err(crate::common::decode_err)?,
            kind: row.try_get(2).map_err(crate::common::decode_err)?,
            payload: row.try_get(3).map_err(crate::common::decode_err)?,
            attempt: crate::common::u32_of(row.try_get(4).map_err(crate::common::decode_err)?),
            retry: crate::common::parse_retry(row.try_get(5).map_err(crate::common::decode_err)?)?,
            dedupe_key: row.try_get(6).map_err(crate::common::decode_err)?,
            concurrency_key: row.try_get(7).map_err(crate::common::decode_err)?,
            created_at: crate::common::from_ms(row.try_get(8).map_err(crate::common::decode_err)?),
            run_at: crate::common::from_ms(row.try_get(9).map_err(crate::common::decode_err)?),
        })
    }};
}
#[cfg(feature = "postgres")]
pub(crate) use claimed_task;

/// Decode a schedule row (`name, cron, timezone, queue, kind, payload, retry, misfire,
/// next_fire_at, last_fire_at, paused`); `paused` is read by the caller as a bool.
pub(crate) struct ScheduleRow {
    pub(crate) name: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) retry: Option<String>,
    pub(crate) misfire: String,
    pub(crate) next_fire_at: i64,
    pub(crate) last_fire_at: Option<i64>,
    pub(crate) paused: bool,
}

pub(crate) const SCHEDULE_COLUMNS: &str = "name, cron, timezone, queue, kind, payload, retry, misfire, next_fire_at, last_fire_at, paused";

macro_rules! schedule_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let d = crate::common::decode_err;
        Ok::<_, flowbot_core::StoreError>(crate::common::ScheduleRow {
            name: row.try_get(0).map_err(d)?,
            cron: row.try_get(1).map_err(d)?,
            timezone: row.try_get(2).map_err(d)?,
            queue: row.try_get(3).map_err(d)?,
            kind: row.try_get(4).map_err(d)?,
            payload: row.try_get(5).map_err(d)?,
            retry: row.try_get(6).map_err(d)?,
            misfire: row.try_get(7).map_err(d)?,
            next_fire_at: row.try_get(8).map_err(d)?,
            last_fire_at: row.try_get(9).map_err(d)?,
            paused: row.try_get(10).map_err(d)?,
        })
    }};
}
pub(crate) use schedule_row;

impl ScheduleRow {
    pub(crate) fn into_state(self) -> Result<flowbot_core::task::ScheduleState, StoreError> {
        use flowbot_core::task::{MisfirePolicy, ScheduleDef, ScheduleState};
        let misfire = MisfirePolicy::parse(&self.misfire).ok_or_else(|| {
            StoreError::Corrupt(format!("unknown misfire policy '{}'", self.misfire))
        })?;
        Ok(ScheduleState {
            def: ScheduleDef {
                name: self.name,
                cron: self.cron,
                timezone: self.timezone,
                queue: self.queue,
                kind: self.kind,
                payload: self.payload,
                retry: parse_retry(self.retry)?,
                misfire,
            },
            next_fire_at: from_ms(self.next_fire_at),
            last_fire_at: self.last_fire_at.map(from_ms),
            paused: self.paused,
        })
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(decode_err)`
pub(crate) fn decode_err(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Map a sqlx error onto the core's categories, so workers know when to back off.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(Box::new(e)),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.is_unique_violation() {
                StoreError::Conflict(db.message().to_owned())
            } else if code.starts_with("08")
                || code == "57P01"
                || code == "57P02"
                || code == "57P03"
                || code == "53300"
                // SQLite: SQLITE_BUSY and SQLITE_LOCKED, plain and extended.
                || code == "5"
                || code == "6"
                || code == "517"
                || code == "262"
            {
                StoreError::Unavailable(Box::new(e))
            } else if code == "40001" || code == "40P01" {
                StoreError::Conflict(db.message().to_owned())
            } else {
                StoreError::Backend(Box::new(e))
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Backend(Box::new(e)),
    }
}

/// Group failures' dead-letter reasons by task, used by both backends' dead-letter listings.
pub(crate) fn attempt_error(
    attempt: i64,
    error: String,
    at: i64,
) -> flowbot_core::task::AttemptError {
    flowbot_core::task::AttemptError {
        attempt: u32_of(attempt),
        error,
        at: from_ms(at),
    }
}

#[cfg(feature = "sqlite")]
pub(crate) fn task_id_json(ids: &[flowbot_core::task::TaskId]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.0.to_string());
    }
    s.push(']');
    s
}

/// The error recorded for an attempt cut off because its worker's process ended (its
/// liveness lock was free).
pub(crate) fn worker_ended_error() -> &'static str {
    "worker ended: the process holding the task's lease ended (crashed or killed), as its free liveness lock showed"
}

pub(crate) fn lease_expired_error() -> &'static str {
    "lease expired: the worker stopped heartbeating (crashed, killed or cut off from the database)"
}

/// Serialise a session's mutable part.
pub(crate) fn session_data(s: &flowbot_core::Session) -> Result<String, StoreError> {
    serde_json::to_string(&serde_json::json!({ "vars": s.vars, "dialog": s.dialog }))
        .map_err(|e| StoreError::Invalid(format!("session: {e}")))
}

pub(crate) fn session_from(
    key: &flowbot_core::SessionKey,
    data: &str,
    version: i64,
    updated_at: i64,
) -> Result<flowbot_core::Session, StoreError> {
    let v = parse_json(data, "session data")?;
    let vars = match v.get("vars") {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let dialog = match v.get("dialog") {
        Some(Value::Null) | None => None,
        Some(d) => Some(
            serde_json::from_value(d.clone())
                .map_err(|e| StoreError::Corrupt(format!("session dialog: {e}")))?,
        ),
    };
    Ok(flowbot_core::Session {
        key: key.clone(),
        vars,
        dialog,
        version,
        updated_at: from_ms(updated_at),
    })
}

pub(crate) fn record_of(r: &TaskRecord) -> Value {
    Value::from(r.id.0)
}

/// A migration: version, name and SQL (several statements).
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(&serde_json::json!([12, "a|b"]));
        assert_eq!(
            decode_cursor(&c).expect("round trip"),
            serde_json::json!([12, "a|b"])
        );
        for bad in ["zz", "abc", "7b", "not a cursor"] {
            let e = decode_cursor(bad).expect_err(bad);
            assert!(e.to_string().contains("malformed cursor"), "{e}");
        }
        let e = int_cursor(Some(&encode_cursor(&Value::from("x")))).expect_err("not an int");
        assert!(matches!(e, StoreError::Invalid(_)));
    }
}
