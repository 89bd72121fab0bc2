//! Cron schedules: parsing, fire planning and the loop that fires them exactly once per fire
//! time across any number of agents.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::types::{NewTask, RetryPolicy};
use crate::error::{Error, Result};
use crate::task::ScheduleStore;

/// Most missed fires enqueued at once for a schedule with [`MisfirePolicy::CatchUp`].
pub const MAX_CATCH_UP_FIRES: usize = 1000;

/// A parsed cron expression (5 fields, or 6 with seconds first) and its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expr: String,
    tz: Tz,
    cron: Cron,
}

impl CronSpec {
    /// Parse `expr` in the time zone named `tz` (an IANA name such as `Europe/Berlin`;
    /// `UTC` when in doubt).
    pub fn parse(expr: &str, tz: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCron {
            expr: expr.to_owned(),
            reason,
        };
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(invalid(format!(
                "expected 5 fields (minute hour day month weekday) or 6 (seconds first), got {fields}"
            )));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(expr).map_err(|e| invalid(e.to_string()))?;
        let tz = Tz::from_str(tz).map_err(|_| invalid(format!("unknown time zone '{tz}'")))?;
        Ok(CronSpec {
            expr: expr.to_owned(),
            tz,
            cron,
        })
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone's IANA name.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
        // At the calendar's ends the local time in a far-off time zone may not exist
        // (croner would panic converting it): no fire time there.
        use chrono::{Offset as _, TimeZone as _};
        let offset = self.tz.offset_from_utc_datetime(&after.naive_utc()).fix();
        let shift = chrono::TimeDelta::seconds(i64::from(offset.local_minus_utc()));
        if after.naive_utc().checked_add_signed(shift).is_none() {
            return Err(Error::InvalidCron {
                expr: self.expr.clone(),
                reason: format!("no fire time after {after}: too close to the end of the calendar"),
            });
        }
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Error::InvalidCron {
                expr: self.expr.clone(),
                reason: format!("no fire time after {after}: {e}"),
            })
    }
}

/// What to do about fire times missed while no agent was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Drop missed fires; fire next at the next future fire time.
    #[default]
    Skip,
    /// Enqueue every missed fire (at most [`MAX_CATCH_UP_FIRES`]), oldest first.
    CatchUp,
}

impl MisfirePolicy {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MisfirePolicy::Skip => "skip",
            MisfirePolicy::CatchUp => "catch_up",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(MisfirePolicy::Skip),
            "catch_up" => Some(MisfirePolicy::CatchUp),
            _ => None,
        }
    }
}

/// A schedule: a cron expression and the task it enqueues at each fire time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDef {
    /// Unique name.
    pub name: String,
    /// Cron expression (5 or 6 fields).
    pub cron: String,
    /// IANA time zone name.
    pub timezone: String,
    /// Queue of the enqueued task.
    pub queue: String,
    /// Kind of the enqueued task.
    pub kind: String,
    /// Payload JSON of the enqueued task.
    pub payload: String,
    /// Retry policy of the enqueued task.
    pub retry: Option<RetryPolicy>,
    /// Misfire policy.
    pub misfire: MisfirePolicy,
}

impl ScheduleDef {
    /// A schedule enqueueing a task of `kind` with `payload` on the default queue, in UTC,
    /// skipping missed fires.
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        kind: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self> {
        let task = NewTask::new(kind, payload)?;
        Ok(ScheduleDef {
            name: name.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            queue: task.queue,
            kind: task.kind,
            payload: task.payload,
            retry: None,
            misfire: MisfirePolicy::Skip,
        })
    }

    /// Evaluate the expression in this time zone.
    pub fn timezone(mut self, tz: impl Into<String>) -> Self {
        self.timezone = tz.into();
        self
    }

    /// Set the misfire policy.
    pub fn misfire(mut self, policy: MisfirePolicy) -> Self {
        self.misfire = policy;
        self
    }

    /// Enqueue on `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Parse and check the definition.
    pub fn spec(&self) -> Result<CronSpec> {
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(Error::InvalidTask {
                kind: self.kind.clone(),
                reason: format!(
                    "schedule name must be 1 to 200 bytes, got {}",
                    self.name.len()
                ),
            });
        }
        CronSpec::parse(&self.cron, &self.timezone)
    }

    /// The task enqueued for the fire at `fire_at`; its dedupe key names the schedule and fire
    /// time, so even a second enqueue of the same fire would be a no-op.
    pub fn task_for(&self, fire_at: DateTime<Utc>) -> NewTask {
        NewTask {
            queue: self.queue.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            run_at: Some(fire_at),
            priority: 0,
            retry: self.retry,
            dedupe_key: Some(format!("cron:{}:{}", self.name, fire_at.timestamp_millis())),
            concurrency_key: None,
        }
    }
}

/// A stored schedule with its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Definition.
    pub def: ScheduleDef,
    /// Next fire time.
    pub next_fire_at: DateTime<Utc>,
    /// Most recent fire time, if it fired.
    pub last_fire_at: Option<DateTime<Utc>>,
    /// Paused schedules do not fire.
    pub paused: bool,
}

/// Outcome of [`ScheduleStore::fire_schedule`](super::ScheduleStore::fire_schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// This call recorded the fire and enqueued the task.
    Fired,
    /// The fire was already recorded (another agent fired it).
    AlreadyFired,
    /// No fire to record (only the next fire time moved).
    Advanced,
}

/// The fire times to enqueue now and the next fire time after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// Fire times to enqueue, oldest first.
    pub fires: Vec<DateTime<Utc>>,
    /// The schedule's next fire time afterwards.
    pub next: DateTime<Utc>,
}

/// Plan the fires of a due schedule. A fire time older than `now - grace` counts as missed
/// and follows the misfire policy; fires within the grace period always fire.
pub fn plan_fires(
    state: &ScheduleState,
    spec: &CronSpec,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<FirePlan> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let cutoff = now
        .checked_sub_signed(grace)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut fires = Vec::new();
    let mut t = state.next_fire_at;
    while t <= now {
        let on_time = t >= cutoff;
        if on_time
            || (state.def.misfire == MisfirePolicy::CatchUp && fires.len() < MAX_CATCH_UP_FIRES)
        {
            fires.push(t);
        }
        t = spec.next_after(t)?;
        let catching_up =
            state.def.misfire == MisfirePolicy::CatchUp && fires.len() < MAX_CATCH_UP_FIRES;
        if t < cutoff && !catching_up {
            // Jump straight past the missed stretch instead of walking it fire by fire.
            let before_cutoff = cutoff
                .checked_sub_signed(chrono::Duration::milliseconds(1))
                .unwrap_or(cutoff);
            t = spec.next_after(before_cutoff)?;
        }
    }
    Ok(FirePlan { fires, next: t })
}

/// Settings of the cron loop.
#[derive(Debug, Clone)]
pub struct CronConfig {
    /// How often due schedules are looked up.
    pub tick: Duration,
    /// Fires older than this when found are missed fires (see [`MisfirePolicy`]).
    pub misfire_grace: Duration,
}

impl Default for CronConfig {
    fn default() -> Self {
        CronConfig {
            tick: Duration::from_millis(500),
            misfire_grace: Duration::from_secs(60),
        }
    }
}

/// Register (or replace) a schedule in `store`, checking its expression and time zone first.
pub async fn register_schedule(store: &dyn ScheduleStore, def: &ScheduleDef) -> Result<()> {
    let spec = def.spec()?;
    let next = spec.next_after(crate::clock::now())?;
    store.upsert_schedule(def, next).await?;
    Ok(())
}

/// Fire every due schedule once. Returns how many fires this call enqueued.
pub async fn fire_due(
    store: &dyn ScheduleStore,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<usize> {
    let mut fired = 0;
    for state in store.due_schedules(now, 100).await? {
        let spec = match state.def.spec() {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(schedule = %state.def.name, error = %e, "schedule cannot be evaluated; pausing it");
                store
                    .set_schedule_paused(&state.def.name, true, state.next_fire_at)
                    .await?;
                continue;
            }
        };
        let plan = plan_fires(&state, &spec, now, grace)?;
        if plan.fires.is_empty() {
            store
                .fire_schedule(&state.def.name, state.next_fire_at, plan.next, None)
                .await?;
        }
        for (i, fire_at) in plan.fires.iter().enumerate() {
            // Intermediate fires only move the schedule up to the following fire; the last
            // one moves it to the plan's next fire time.
            let next = plan.fires.get(i + 1).copied().unwrap_or(plan.next);
            let task = state.def.task_for(*fire_at);
            if store
                .fire_schedule(&state.def.name, *fire_at, next, Some(&task))
                .await?
                == FireOutcome::Fired
            {
                fired += 1;
            }
        }
    }
    Ok(fired)
}

/// Run the cron loop until `shutdown` is cancelled, retrying after store errors.
pub async fn run_cron(
    store: Arc<dyn ScheduleStore>,
    config: CronConfig,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        let wait = match fire_due(store.as_ref(), crate::clock::now(), config.misfire_grace).await {
            Ok(_) => {
                failures = 0;
                config.tick
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = super::worker::error_backoff(failures);
                tracing::warn!(error = %e, retry_in = ?backoff, "cron loop: firing schedules failed");
                backoff
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn parses_five_and_six_fields_and_rejects_the_rest() {
        let five = CronSpec::parse("*/15 * * * *", "UTC").expect("5 fields");
        assert_eq!(
            five.next_after(at("2026-01-01T10:07:00Z")).expect("next"),
            at("2026-01-01T10:15:00Z")
        );
        let six = CronSpec::parse("*/10 * * * * *", "UTC").expect("6 fields");
        assert_eq!(
            six.next_after(at("2026-01-01T10:07:01Z")).expect("next"),
            at("2026-01-01T10:07:10Z")
        );
        for bad in ["* * * *", "* * * * * * *", "61 * * * *", "* * * * FOO", ""] {
            let e = CronSpec::parse(bad, "UTC").expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        let e = CronSpec::parse("0 9 * * *", "Mars/Olympus").expect_err("bad tz");
        assert!(
            e.to_string().contains("unknown time zone 'Mars/Olympus'"),
            "{e}"
        );
    }

    #[test]
    fn time_zones_shift_fire_times() {
        let spec = CronSpec::parse("0 9 * * *", "Europe/Berlin").expect("spec");
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            spec.next_after(at("2026-01-10T00:00:00Z")).expect("next"),
            at("2026-01-10T08:00:00Z")
        );
        assert_eq!(
            spec.next_after(at("2026-07-10T00:00:00Z")).expect("next"),
            at("2026-07-10T07:00:00Z")
        );
    }

    fn state(misfire: MisfirePolicy, next: &str) -> ScheduleState {
        let def = ScheduleDef::new("s", "* * * * *", "k", &())
            .expect("def")
            .misfire(misfire);
        ScheduleState {
            def,
            next_fire_at: at(next),
            last_fire_at: None,
            paused: false,
        }
    }

    #[test]
    fn misfire_policies() {
        let spec = CronSpec::parse("* * * * *", "UTC").expect("spec");
        let now = at("2026-01-01T10:10:30Z");
        let grace = Duration::from_secs(60);
        // Down since 10:00: skip fires only what is within the grace period.
        let plan = plan_fires(
            &state(MisfirePolicy::Skip, "2026-01-01T10:00:00Z"),
            &spec,
            now,
            grace,
        )
        .expect("plan");
        assert_eq!(plan.fires, vec![at("2026-01-01T10:10:00Z")]);
        assert_eq!(plan.next, at("2026-01-01T10:11:00Z"));
        let plan = plan_fires(
            &state(MisfirePolicy::CatchUp, "2026-01-01T10:00:00Z"),
            &spec,
            now,
            grace,
        )
        .expect("plan");
        assert_eq!(plan.fires.len(), 11);
        assert_eq!(plan.fires[0], at("2026-01-01T10:00:00Z"));
        assert_eq!(plan.next, at("2026-01-01T10:11:00Z"));
        // Not due yet: nothing.
        let plan = plan_fires(
            &state(MisfirePolicy::Skip, "2026-01-01T10:11:00Z"),
            &spec,
            now,
            grace,
        )
        .expect("plan");
        assert!(plan.fires.is_empty());
        // A year of missed minutes is passed over without walking every minute, and catch-up
        // stops at its cap (plus the on-time fire).
        let long = at("2027-01-01T00:00:30Z");
        let plan = plan_fires(
            &state(MisfirePolicy::Skip, "2026-01-01T10:00:00Z"),
            &spec,
            long,
            grace,
        )
        .expect("plan");
        assert_eq!(plan.fires, vec![at("2027-01-01T00:00:00Z")]);
        let plan = plan_fires(
            &state(MisfirePolicy::CatchUp, "2026-01-01T10:00:00Z"),
            &spec,
            long,
            grace,
        )
        .expect("plan");
        assert_eq!(plan.fires.len(), MAX_CATCH_UP_FIRES + 1);
    }
}
