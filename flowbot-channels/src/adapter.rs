//! What the platform adapters (Telegram, Tailchat, Slack, Discord) share: checks of their
//! settings, constant-time token comparison, and storing an inbound event on the task queue
//! before the platform is answered.

use std::sync::atomic::Ordering;

use flowbot_core::task::NewTask;
use flowbot_core::task::TaskQueue;
use flowbot_core::{ChannelName, Event, INBOUND_TASK, StoreError};

use crate::AdapterCounters;
use crate::problem::Problem;

/// A channel name usable in URLs.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if crate::valid_id(name, 64) {
        Ok(())
    } else {
        Err(format!(
            "name '{name}' must be 1-64 characters of A-Z a-z 0-9 _ - . : @"
        ))
    }
}

/// The longest ttl of a platform lease (Telegram's poller, a Discord shard): 1 hour.
#[cfg(any(feature = "telegram", feature = "discord"))]
pub(crate) const MAX_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A platform lease's timing: renewed at least twice within its ttl, and a ttl of at most
/// [`MAX_LEASE_TTL`] (the holder adds its renewal period to times; this keeps that in range).
#[cfg(any(feature = "telegram", feature = "discord"))]
pub(crate) fn check_lease(
    what: &str,
    lease: &flowbot_core::lease::LeaseTiming,
) -> Result<(), String> {
    if lease.ttl > MAX_LEASE_TTL {
        return Err(format!("the {what} lease's ttl must be at most 1 hour"));
    }
    if lease.every.is_zero()
        || lease
            .every
            .checked_mul(2)
            .is_none_or(|twice| lease.ttl < twice)
    {
        return Err(format!(
            "the {what} lease's ttl must be at least twice its renewal period"
        ));
    }
    Ok(())
}

/// The default `lease_ttl_secs` of a platform lease in settings: 15 s.
#[cfg(any(feature = "telegram", feature = "discord"))]
pub(crate) fn default_lease_ttl_secs() -> u64 {
    15
}

/// A platform lease of `ttl_secs` (3 to 3600, the `lease_ttl_secs` of settings), renewed
/// every third of it.
#[cfg(any(feature = "telegram", feature = "discord"))]
pub(crate) fn lease_from_secs(
    ttl_secs: u64,
) -> Result<flowbot_core::lease::LeaseTiming, crate::SettingsError> {
    if !(3..=MAX_LEASE_TTL.as_secs()).contains(&ttl_secs) {
        return Err(format!(
            "lease_ttl_secs must be from 3 to {} (1 hour), got {ttl_secs}",
            MAX_LEASE_TTL.as_secs()
        )
        .into());
    }
    let ttl = std::time::Duration::from_secs(ttl_secs);
    Ok(flowbot_core::lease::LeaseTiming {
        ttl,
        every: ttl / 3,
    })
}

/// An http(s) URL setting.
pub(crate) fn check_url(field: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{field} '{url}' is not an http:// or https:// URL"))
    }
}

/// Compare two secrets in constant time.
#[cfg(any(feature = "telegram", feature = "tailchat"))]
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an inbound event was not stored.
#[derive(Debug)]
pub(crate) enum Unstored {
    /// The event cannot be a task (too large, …).
    Invalid(String),
    /// The store failed: the platform should deliver it again.
    Store(StoreError),
}

impl From<Unstored> for Problem {
    fn from(u: Unstored) -> Problem {
        match u {
            Unstored::Invalid(e) => Problem::bad_request(e),
            Unstored::Store(e) => Problem::from_store(&e),
        }
    }
}

/// Store `event` as an inbound task for `channel`, in its conversation's order, under
/// `dedupe` (the same key for every delivery of one platform event, so redeliveries are
/// handled once), and count it.
pub(crate) async fn enqueue_inbound(
    store: &dyn TaskQueue,
    channel: &ChannelName,
    counters: &AdapterCounters,
    event: &Event,
    dedupe: &str,
) -> Result<(), Unstored> {
    let conversation = event
        .conversation()
        .map(ToString::to_string)
        .unwrap_or_default();
    // Edits go in a lane of their own: a newer task in a conversation's lane overtakes the
    // answer in progress there (`superseded`), and correcting a typo should not cut off the
    // answer to the message before it.
    let lane = if matches!(event, Event::MessageEdited(_)) {
        ":edits"
    } else {
        ""
    };
    let task = NewTask::new(INBOUND_TASK, event)
        .map_err(|e| Unstored::Invalid(e.to_string()))?
        .concurrency_key(format!("inbound:{channel}:{conversation}{lane}"))
        .dedupe_key(format!("inbound:{channel}:{dedupe}"));
    store.enqueue(&task).await.map_err(Unstored::Store)?;
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(all(test, any(feature = "telegram", feature = "discord")))]
mod tests {
    use super::*;
    use flowbot_core::lease::LeaseTiming;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any lease timing (a Rust caller's, not only the configuration's) is accepted only
        /// when the holder's arithmetic on it stays in range, and checking never overflows.
        #[test]
        fn lease_timings_are_checked_without_overflow(
            ttl in prop_oneof![any::<u64>().prop_map(Duration::from_secs), (0u64..7_200_000).prop_map(Duration::from_millis), Just(Duration::MAX)],
            every in prop_oneof![any::<u64>().prop_map(Duration::from_secs), (0u64..7_200_000).prop_map(Duration::from_millis), Just(Duration::MAX)],
        ) {
            match check_lease("test", &LeaseTiming { ttl, every }) {
                Ok(()) => prop_assert!(ttl <= MAX_LEASE_TTL && !every.is_zero() && every * 2 <= ttl),
                Err(e) => prop_assert!(e.starts_with("the test lease's ttl must be"), "{e}"),
            }
        }
    }
}
