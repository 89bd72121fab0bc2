//! The time FlowBot reads: one clock for every timestamp, deadline and expiry, that tests can
//! pause and move.
//!
//! Every part of FlowBot (the queue's run times, leases and retries, schedules, sessions,
//! drafts, API keys, workflow runs, the stores' records) reads the wall clock through
//! [`now`]. In a normal build that is the system's clock.
//!
//! With the `test-util` feature, [`now`] follows tokio's clock as well: pause the runtime
//! (`#[tokio::test(start_paused = true)]` or `tokio::time::pause()`) and FlowBot's time
//! stops with tokio's sleeps and intervals; `tokio::time::advance` moves both together,
//! so a test sees a lease expire or a schedule fire without waiting for it. A test that talks
//! to real sockets and databases, where a paused clock would fire its timeouts whenever the
//! runtime waits on them, jumps instead: `skip` moves FlowBot's clock forward and lets it
//! run on from there (say, past an API key's expiry).
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! let before = flowbot_core::clock::now();
//! tokio::time::advance(Duration::from_secs(90)).await;
//! assert_eq!(flowbot_core::clock::now() - before, chrono::Duration::seconds(90));
//! # }
//! # #[cfg(not(feature = "test-util"))]
//! # fn main() {}
//! ```
//!
//! With the feature on, the time is the system's clock read once and moved by the monotonic
//! clock since, so a system clock set later is not followed: leave the feature to tests
//! (`[dev-dependencies]`).

use chrono::{DateTime, Utc};
#[cfg(feature = "test-util")]
use std::sync::atomic::Ordering;

/// The current time: the system's clock, moved as tokio's clock is moved when the `test-util`
/// feature is on (see the [module](self) docs).
pub fn now() -> DateTime<Utc> {
    #[cfg(feature = "test-util")]
    {
        let (wall, real) = *ANCHOR.get_or_init(|| (Utc::now(), std::time::Instant::now()));
        let skipped = std::time::Duration::from_nanos(SKIPPED.load(Ordering::Relaxed));
        let at = tokio::time::Instant::now().into_std();
        shifted(wall, real, at.checked_add(skipped).unwrap_or(at))
    }
    #[cfg(not(feature = "test-util"))]
    {
        Utc::now()
    }
}

/// The system's clock and the monotonic clock read together once, the first time [`now`] is
/// called: from then on the time is that reading moved by how far tokio's clock went, so a
/// paused clock stands exactly still (a test process is too short for the system clock to
/// drift from the monotonic one).
#[cfg(feature = "test-util")]
static ANCHOR: std::sync::OnceLock<(DateTime<Utc>, std::time::Instant)> =
    std::sync::OnceLock::new();

/// Nanoseconds `skip` moved the clock by.
#[cfg(feature = "test-util")]
static SKIPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `wall`, read at `real`, moved to `at` (either side of it).
#[cfg(feature = "test-util")]
fn shifted(wall: DateTime<Utc>, real: std::time::Instant, at: std::time::Instant) -> DateTime<Utc> {
    let span = |d: std::time::Duration| chrono::Duration::from_std(d).ok();
    if at >= real {
        span(at - real)
            .and_then(|d| wall.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    } else {
        span(real - at)
            .and_then(|d| wall.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Moves [`now`] `by` forward for the whole process, from where it runs on as before.
/// tokio's clock is not moved: sleeps and timeouts wait as they would have. For tests over
/// real sockets and databases, in any runtime, where pausing tokio's clock would fire their
/// timeouts whenever the runtime waits on them.
#[cfg(feature = "test-util")]
pub fn skip(by: std::time::Duration) {
    let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    // Saturating: the clock reads MAX_UTC past the end rather than wrapping.
    let _ = SKIPPED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_add(nanos))
    });
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_stops_and_moves_with_tokio() {
        let start = now();
        // Real time passes; the paused clock does not.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(now() - start, chrono::Duration::hours(1));
        // A sleep on the paused runtime moves it by exactly its length.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(now() - start, chrono::Duration::seconds(3605));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unpaused_it_is_the_system_clock_until_skipped() {
        assert!((now() - Utc::now()).abs() < chrono::Duration::seconds(1));
        let before = now();
        skip(Duration::from_secs(600));
        let after = now();
        let moved = after - before;
        assert!(
            moved >= chrono::Duration::seconds(600) && moved < chrono::Duration::seconds(601),
            "{moved}"
        );
        // Running on: real time moves it.
        std::thread::sleep(Duration::from_millis(20));
        assert!(now() - after >= chrono::Duration::milliseconds(20));
    }

    #[test]
    fn shifting_saturates_at_the_ends_of_time() {
        let real = std::time::Instant::now();
        let far = real + Duration::from_secs(u64::from(u32::MAX) * 1000);
        assert_eq!(
            shifted(DateTime::<Utc>::MAX_UTC, real, far),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            shifted(DateTime::<Utc>::MIN_UTC, far, real),
            DateTime::<Utc>::MIN_UTC
        );
    }
}
