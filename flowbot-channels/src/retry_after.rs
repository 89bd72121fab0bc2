//! How long a platform asks us to wait before trying again (an HTTP `Retry-After` header,
//! Telegram's `parameters.retry_after`, Discord's `retry_after`), read defensively: the value
//! comes from outside, so a huge one is cut down to [`MAX_RETRY_AFTER`], a negative one
//! counts as no wait, and one that is not a number or a date is not understood (`None`), so
//! the caller's own backoff applies. Nothing here can panic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The longest wait a platform's `Retry-After` is taken for: 1 hour. Longer values are cut
/// down to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Seconds from a platform (a JSON number or a header's number), cut into `0..=`
/// [`MAX_RETRY_AFTER`]: not a number or negative is no wait, too large (infinity included)
/// is the maximum.
pub fn from_secs_f64(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else if secs >= MAX_RETRY_AFTER.as_secs_f64() {
        MAX_RETRY_AFTER
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER)
    }
}

/// An HTTP `Retry-After` value, relative to `now`: delay-seconds (an integer, or a decimal as
/// some platforms send) or an HTTP date. `None` when it is neither.
pub fn parse_header(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (!secs.is_nan()).then(|| from_secs_f64(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&Utc).signed_duration_since(now);
    // A date in the past is no wait; `to_std` fails only on a negative difference.
    Some(
        wait.to_std()
            .map_or(Duration::ZERO, |d| d.min(MAX_RETRY_AFTER)),
    )
}

/// A wait in a JSON body: a number of seconds, or a string holding one.
pub fn from_json(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n.as_f64().map(from_secs_f64),
        Value::String(s) => parse_header(s, flowbot_core::clock::now()),
        _ => None,
    }
}

/// A platform's failure as the source of a channel error, saying whether another attempt can
/// help. A 4xx refuses the message itself (400 bad request or chat not found, 403 blocked by
/// the user, 404, 413, …): [`Permanent`](flowbot_core::Permanent), so the pipeline reports
/// it and does not send the same message again. Except for 401 (the bot's credentials, which
/// an operator can fix while the message waits in the queue), 408, 409, 425 and 429, which
/// are [`Transient`](flowbot_core::Transient) with the platform's wait, as are a 5xx and no
/// answer at all (`status` `None`).
#[cfg(any(
    feature = "telegram",
    feature = "slack",
    feature = "discord",
    feature = "tailchat",
    feature = "notifiers"
))]
pub(crate) fn classified(
    status: Option<u16>,
    retry_after: Option<Duration>,
    error: impl Into<flowbot_core::BoxError>,
) -> flowbot_core::BoxError {
    match status {
        Some(s @ 400..=499) if !matches!(s, 401 | 408 | 409 | 425 | 429) => {
            Box::new(flowbot_core::Permanent::new(error))
        }
        _ => Box::new(flowbot_core::Transient::new(error).retry_after_opt(retry_after)),
    }
}

/// A message the platform can never take as it is (no target, a button value too long):
/// [`Permanent`](flowbot_core::Permanent).
#[cfg(any(
    feature = "telegram",
    feature = "slack",
    feature = "discord",
    feature = "tailchat",
    feature = "webhook"
))]
pub(crate) fn unsendable(detail: impl Into<flowbot_core::BoxError>) -> flowbot_core::BoxError {
    Box::new(flowbot_core::Permanent::new(detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    #[test]
    fn values_platforms_send() {
        let now = Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 0, 0)
            .single()
            .expect("a time");
        assert_eq!(parse_header("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_header(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_header("-5", now), Some(Duration::ZERO));
        assert_eq!(
            parse_header("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_header("inf", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_header("NaN", now), None);
        assert_eq!(parse_header("soon", now), None);
        assert_eq!(
            parse_header("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(28 * 60))
        );
        assert_eq!(
            parse_header("Wed, 21 Oct 2015 06:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_header("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            from_json(&serde_json::json!(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(from_json(&serde_json::json!(1e300)), Some(MAX_RETRY_AFTER));
        assert_eq!(from_json(&serde_json::json!(-1)), Some(Duration::ZERO));
        assert_eq!(
            from_json(&serde_json::json!("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(from_json(&serde_json::json!(null)), None);
        assert_eq!(from_json(&serde_json::json!([1])), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a platform sends, the wait is within `0..=MAX_RETRY_AFTER` or not
        /// understood.
        #[test]
        fn any_value_is_a_bounded_wait(
            header in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                "[0-9]{15,40}",
                "-?[0-9]{1,30}(\\.[0-9]{1,30})?(e-?[0-9]{1,4})?",
                "[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|[+-][0-9]{4})",
                "[ -~]{0,40}",
            ],
            secs in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
            now_secs in -8_000_000_000_000i64..8_000_000_000_000,
        ) {
            let now = Utc.timestamp_opt(now_secs, 0).single().unwrap_or_default();
            if let Some(d) = parse_header(&header, now) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
            prop_assert!(from_secs_f64(secs) <= MAX_RETRY_AFTER);
            if let Some(d) = from_json(&serde_json::json!(secs)) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
            if let Some(d) = from_json(&Value::String(header)) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }
    }

    #[test]
    #[cfg(feature = "telegram")]
    fn platform_statuses_are_permanent_or_transient() {
        let e = |status, wait| {
            flowbot_core::Error::channel("c", super::classified(status, wait, "words"))
        };
        for status in [400, 403, 404, 405, 410, 413, 422, 451] {
            assert!(e(Some(status), None).is_permanent(), "{status}");
        }
        for status in [401, 408, 409, 425, 429, 500, 502]
            .map(Some)
            .into_iter()
            .chain([None])
        {
            assert!(e(status, None).is_transient(), "{status:?}");
        }
        let limited = e(Some(429), Some(Duration::from_secs(90)));
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(90)));
        assert!(flowbot_core::Error::channel("c", super::unsendable("no target")).is_permanent());
    }
}
