//! Dates and durations from input never reach a panic: property tests over the entry points
//! that turn input into times (workflow definitions, retry policies, task delays, cron
//! schedules, rate limits). Each either accepts a value within its documented limit or
//! refuses it with a message naming the limit.
// Workflow definitions are among them: the tests run with the `workflows` feature (a default).
#![cfg(feature = "workflows")]

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flowbot_core::task::{
    Backoff, CronSpec, MAX_DELAY, MisfirePolicy, NewTask, RetryPolicy, ScheduleDef, ScheduleState,
    plan_fires,
};
use flowbot_core::workflow::{CheckContext, Format, Problem, Workflow, WorkflowSpec};
use flowbot_core::{ActionRegistry, RateLimit, TaskError};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Humantime-like text: a number (small, huge, or past u64) and a unit, or garbage.
fn duration_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..1000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just(u64::MAX.to_string()),
        Just("99999999999999999999999999".to_owned()),
        (1u64..10_000_000).prop_map(|n| n.to_string()),
    ];
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "years", "", "x",
    ]);
    prop_oneof![
        4 => (number, unit).prop_map(|(n, u)| format!("{n}{u}")),
        1 => "[ -~]{0,12}",
        1 => Just("300000y".to_owned()),
        1 => Just("3651d".to_owned()),
        1 => Just("3650d".to_owned()),
    ]
}

/// A time anywhere chrono can hold one.
fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        (min..=max).prop_map(|s| Utc.timestamp_opt(s, 0).single().unwrap_or_default()),
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
        (0i64..4_102_444_800).prop_map(|s| Utc.timestamp_opt(s, 0).single().unwrap_or_default()),
    ]
}

fn check(yaml: &str) -> Result<Workflow, Vec<Problem>> {
    let spec = WorkflowSpec::parse(yaml, Format::Yaml).expect("the test definition parses");
    let actions = ActionRegistry::with_builtins();
    let secrets = BTreeSet::new();
    Workflow::check(
        spec,
        CheckContext {
            actions: &actions,
            scripts: None,
            secrets: &secrets,
        },
    )
}

/// Accepted only within the limit; refused with a problem on `node`'s `field`.
fn accepted_or_named(yaml: &str, text: &str, node: Option<&str>, field: &str) {
    let parsed = humantime::parse_duration(text).ok();
    match check(yaml) {
        Ok(_) => assert!(
            parsed.is_some_and(|d| d <= MAX_DELAY),
            "'{text}' accepted for {field}"
        ),
        Err(problems) => {
            let p = problems
                .iter()
                .find(|p| p.node.as_deref() == node && p.field == field)
                .unwrap_or_else(|| panic!("no problem on {field} for '{text}': {problems:?}"));
            let overflow = matches!(
                humantime::parse_duration(text),
                Err(humantime::DurationError::NumberOverflow)
            );
            if parsed.is_some_and(|d| d > MAX_DELAY) || overflow {
                assert!(p.message.contains("3650 days"), "{p}");
            }
        }
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

proptest! {
    #![proptest_config(config())]

    /// `delay`, `wait.timeout`, `timeout` and the retry durations of a workflow are refused
    /// past 3650 days, on their node and field, at check time.
    #[test]
    fn workflow_durations_are_refused_past_the_limit(text in duration_text()) {
        let q = quoted(&text);
        accepted_or_named(
            &format!("name: far\nnodes:\n  - id: later\n    delay: {q}\n"),
            &text, Some("later"), "delay",
        );
        accepted_or_named(
            &format!("name: far\nnodes:\n  - id: w\n    wait: {{ event: e, key: k, timeout: {q} }}\n"),
            &text, Some("w"), "wait.timeout",
        );
        accepted_or_named(
            &format!("name: far\nnodes:\n  - id: t\n    action: log\n    with: {{ message: hi }}\n    timeout: {q}\n"),
            &text, Some("t"), "timeout",
        );
        accepted_or_named(
            &format!("name: far\nnodes:\n  - id: r\n    action: log\n    with: {{ message: hi }}\n    retry: {{ max_attempts: 3, delay: {q} }}\n"),
            &text, Some("r"), "retry.delay",
        );
        accepted_or_named(
            &format!("name: far\nnodes:\n  - id: r\n    action: log\n    with: {{ message: hi }}\n    retry: {{ max_attempts: 3, max_delay: {q} }}\n"),
            &text, Some("r"), "retry.max_delay",
        );
        accepted_or_named(
            &format!("name: far\ntimeout: {q}\nnodes:\n  - id: a\n    action: log\n    with: {{ message: hi }}\n"),
            &text, None, "timeout",
        );
    }

    /// A literal `until` is an RFC 3339 time at most 3650 days ahead, or a problem on `until`.
    #[test]
    fn literal_until_is_checked(year in 0i32..=9999, text in "[ -~]{0,30}", pick in 0u8..3) {
        let until = match pick {
            0 => format!("{year:04}-06-01T00:00:00Z"),
            1 => format!("{year:04}-13-45T99:00:00+99:00"),
            _ => text,
        };
        let yaml = format!("name: u\nnodes:\n  - id: at\n    until: {}\n", quoted(&until));
        match check(&yaml) {
            Ok(_) => {
                let at = DateTime::parse_from_rfc3339(until.trim());
                let template = until.contains("{{") || until.contains("{%");
                prop_assert!(template || at.is_ok_and(|t| t.with_timezone(&Utc) < Utc::now() + chrono::Duration::days(3651)), "{until}");
            }
            Err(problems) => {
                prop_assert!(problems.iter().any(|p| p.node.as_deref() == Some("at") && p.field == "until"), "{problems:?}");
            }
        }
    }

    /// Retry policies built from any values: validation refuses what is out of range, and the
    /// delay of any attempt of any policy (validated or not) is at most the limit.
    #[test]
    fn retry_delays_never_overflow(
        max_attempts in any::<u32>(),
        delay_ms in prop_oneof![any::<u64>(), 0u64..10_000, Just(u64::MAX)],
        kind in 0u8..3,
        factor in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::MAX), 1.0f64..10.0],
        max_delay_ms in prop_oneof![any::<u64>(), Just(u64::MAX), 1u64..1_000_000],
        jitter in prop_oneof![any::<f64>(), Just(f64::NAN), Just(-1.0), Just(2.0), 0.0f64..=1.0],
        attempt in prop_oneof![any::<u32>(), 0u32..50, Just(u32::MAX)],
    ) {
        let backoff = match kind {
            0 => Backoff::Fixed { delay_ms },
            1 => Backoff::Linear { delay_ms },
            _ => Backoff::Exponential { delay_ms, factor },
        };
        let policy = RetryPolicy { max_attempts, backoff, max_delay_ms, jitter };
        // Unvalidated: still no panic, still within the limits.
        let d = policy.delay(attempt);
        prop_assert!(d <= MAX_DELAY);
        prop_assert!(policy.base_delay(attempt) <= MAX_DELAY);
        prop_assert!(d <= policy.base_delay(attempt));
        if let Err(e) = policy.validate() {
            prop_assert!(!e.to_string().is_empty());
        } else {
            prop_assert!(delay_ms <= MAX_DELAY.as_millis() as u64);
            prop_assert!(max_delay_ms <= MAX_DELAY.as_millis() as u64);
            prop_assert!(d <= Duration::from_millis(max_delay_ms));
        }
        // The builders check the same.
        let built = RetryPolicy::new(max_attempts.max(1))
            .and_then(|p| p.exponential(Duration::from_millis(delay_ms), factor))
            .and_then(|p| p.max_delay(Duration::from_millis(max_delay_ms)))
            .and_then(|p| p.jitter(jitter));
        if let Ok(p) = built {
            prop_assert!(p.delay(attempt) <= MAX_DELAY);
        }
        // Serde goes through the same validation.
        let json = serde_json::json!({
            "max_attempts": max_attempts, "backoff": {"kind": "fixed", "delay_ms": delay_ms},
            "max_delay_ms": max_delay_ms, "jitter": if jitter.is_finite() { jitter } else { 0.5 },
        });
        if let Ok(p) = serde_json::from_value::<RetryPolicy>(json) {
            prop_assert!(p.delay(attempt) <= MAX_DELAY);
        }
    }

    /// A delay of any length gives a start time; a handler's `Retry-After` of any length is cut
    /// down to the limit.
    #[test]
    fn task_delays_saturate(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        let task = NewTask::new("k", &()).expect("a task").delay(d);
        let at = task.run_at.expect("a start time");
        prop_assert!(at <= Utc::now() + chrono::Duration::from_std(MAX_DELAY).expect("fits"));
        let e = TaskError::retryable("slow down").retry_after(d);
        prop_assert!(e.requested_delay().is_some_and(|r| r <= MAX_DELAY));
    }

    /// A cron expression from input parses or is refused; the next fire after any time is a
    /// time or an error, never a panic.
    #[test]
    fn cron_next_fire_never_panics(
        fields in prop::collection::vec(
            prop_oneof![
                Just("*".to_owned()),
                (0u64..100).prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                Just("*/0".to_owned()),
                (1u64..100).prop_map(|n| format!("*/{n}")),
                Just("L".to_owned()),
                Just("5#5".to_owned()),
                Just("2999-3000".to_owned()),
                Just("30".to_owned()),
                "[ -~]{1,4}",
            ],
            4..=7,
        ),
        tz in prop::sample::select(vec!["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/St_Johns", "Etc/GMT+12", "Nope/Zone"]),
        after in any_time(),
    ) {
        let expr = fields.join(" ");
        if let Ok(spec) = CronSpec::parse(&expr, tz)
            && let Ok(next) = spec.next_after(after)
        {
            prop_assert!(next > after, "{expr}: {next} after {after}");
        }
    }

    /// Planning a due schedule's fires from any stored next fire time ends:
    /// fires in order, none after now, the next fire after now.
    #[test]
    fn schedule_fire_plans_never_panic(
        expr in prop::sample::select(vec!["0 0 1 1 *", "0 0 29 2 *", "0 0 31 12 *", "0 0 * * 1", "30 2 * * *"]),
        misfire in prop::sample::select(vec![MisfirePolicy::Skip, MisfirePolicy::CatchUp]),
        stored in any_time(),
        now in any_time(),
        // The grace is the agent's own setting (`CronConfig::misfire_grace`), not input; a
        // grace of centuries would make every missed fire an on-time one.
        grace_secs in 0u64..=7 * 24 * 3600,
    ) {
        let def = ScheduleDef::new("s", expr, "k", &()).expect("def").misfire(misfire);
        let spec = def.spec().expect("a valid expression");
        let state = ScheduleState { def, next_fire_at: stored, last_fire_at: None, paused: false };
        if let Ok(plan) = plan_fires(&state, &spec, now, Duration::from_secs(grace_secs)) {
            prop_assert!(plan.fires.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(plan.fires.iter().all(|t| *t <= now));
            prop_assert!(plan.next > now);
        }
    }

    /// A rate limit's period of any length is accepted up to 365 days or refused by name.
    #[test]
    fn rate_limit_periods_are_checked(burst in any::<u32>(), secs in any::<u64>()) {
        let period = Duration::from_secs(secs);
        match RateLimit::per_user(burst, period) {
            Ok(_) => prop_assert!(burst > 0 && period <= RateLimit::MAX_PERIOD && !period.is_zero()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The issue's example: a 300000-year delay is refused on node `later`, field `delay`.
#[test]
fn the_far_workflow_is_refused_on_its_node_and_field() {
    let problems = check("name: far\nnodes:\n  - id: later\n    delay: 300000y\n")
        .expect_err("a 300000-year delay is refused");
    let p = &problems[0];
    assert_eq!(p.node.as_deref(), Some("later"));
    assert_eq!(p.field, "delay");
    assert!(
        p.to_string()
            .contains("node `later`, field `delay`: '300000y' is too long: at most 3650 days"),
        "{p}"
    );
    // The longest delay allowed is fine.
    check("name: far\nnodes:\n  - id: later\n    delay: 3650d\n").expect("3650 days is allowed");
}

/// A schedule that never fires, or whose next fire lies past the year 5000, is an error.
#[test]
fn impossible_and_far_fire_times_are_errors() {
    let now = Utc::now();
    let never = CronSpec::parse("0 0 30 2 *", "UTC").and_then(|s| s.next_after(now));
    assert!(never.is_err(), "{never:?}");
    let yearly = CronSpec::parse("0 0 1 1 *", "UTC").expect("valid");
    let far = Utc
        .with_ymd_and_hms(6000, 1, 1, 0, 0, 0)
        .single()
        .expect("a time");
    assert!(yearly.next_after(far).is_err());
    assert!(yearly.next_after(DateTime::<Utc>::MAX_UTC).is_err());
    assert!(yearly.next_after(DateTime::<Utc>::MIN_UTC).is_ok());
}
