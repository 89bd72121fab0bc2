//! Middleware runs before routing and may stop an event: deduplication of redelivered
//! platform events and per-user rate limiting are built in.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{Error, Result};
use crate::message::{ChannelName, Event, MessageId, Outbound, UserId};

/// What middleware decides about an event.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per event and middleware: boxing would gain nothing
pub enum Flow {
    /// Go on to the next middleware and the router.
    Continue,
    /// Stop here, optionally answering with a message.
    Stop(Option<Outbound>),
}

/// Runs before the router for every event.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not FlowBot middleware",
    note = "implement `Middleware::before`, returning `Flow::Continue` or `Flow::Stop`"
)]
pub trait Middleware: Send + Sync + 'static {
    /// Inspect the event and decide whether it goes on.
    async fn before(&self, event: &Event) -> Result<Flow>;

    /// Handling `event`, which this middleware let through, failed; the queue may bring it
    /// again. Middleware that remembers events (deduplication) forgets this one, so the
    /// retry is not taken for a redelivery. The default does nothing.
    async fn failed(&self, _event: &Event) {}
}

/// Drops events whose platform id was seen recently (platforms redeliver on timeouts).
///
/// Remembers up to `capacity` ids for `ttl` each in memory; the message store's unique key on
/// (channel, message id) catches redeliveries across restarts and servers.
#[derive(Debug)]
pub struct Dedupe {
    ttl: Duration,
    capacity: usize,
    seen: Mutex<DedupeState>,
}

#[derive(Debug, Default)]
struct DedupeState {
    at: HashMap<(ChannelName, MessageId), Instant>,
    order: VecDeque<((ChannelName, MessageId), Instant)>,
}

impl Dedupe {
    /// Remember `capacity` ids for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Dedupe {
            ttl,
            capacity: capacity.max(1),
            seen: Mutex::new(DedupeState::default()),
        }
    }

    /// Whether `(channel, id)` was seen within the TTL; records it if not.
    pub fn check_and_record(&self, channel: &ChannelName, id: &MessageId) -> bool {
        let now = Instant::now();
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((key, at)) = s.order.front() {
            if now.duration_since(*at) < self.ttl && s.order.len() < self.capacity {
                break;
            }
            let key = key.clone();
            let at = *at;
            s.order.pop_front();
            if s.at.get(&key) == Some(&at) {
                s.at.remove(&key);
            }
        }
        let key = (channel.clone(), id.clone());
        if s.at.contains_key(&key) {
            return true;
        }
        s.at.insert(key.clone(), now);
        s.order.push_back((key, now));
        false
    }

    /// Forget `(channel, id)`, so it passes once more (its handling failed and is retried).
    pub fn forget(&self, channel: &ChannelName, id: &MessageId) {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.at.remove(&(channel.clone(), id.clone()));
    }
}

impl Default for Dedupe {
    /// 100,000 ids for 10 minutes.
    fn default() -> Self {
        Dedupe::new(100_000, Duration::from_secs(600))
    }
}

#[async_trait]
impl Middleware for Dedupe {
    async fn before(&self, event: &Event) -> Result<Flow> {
        match event.dedupe_id() {
            Some(id) if self.check_and_record(event.channel(), id) => {
                tracing::debug!(channel = %event.channel(), id = %id, "dropping redelivered event");
                Ok(Flow::Stop(None))
            }
            _ => Ok(Flow::Continue),
        }
    }

    async fn failed(&self, event: &Event) {
        if let Some(id) = event.dedupe_id() {
            self.forget(event.channel(), id);
        }
    }
}

/// Per-user rate limit (token bucket, via the `governor` crate): `burst` events at once, then
/// one every `period / burst`. Events over the limit are dropped, with an optional notice.
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<(ChannelName, UserId)>,
    notice: Option<String>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("notice", &self.notice)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// The longest `period` [`RateLimit::per_user`] takes.
    pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Allow `burst` events per `period` per user; `period` is at most
    /// [`RateLimit::MAX_PERIOD`] (365 days).
    pub fn per_user(burst: u32, period: Duration) -> Result<Self> {
        let burst = NonZeroU32::new(burst)
            .ok_or_else(|| Error::Build("rate limit: burst must be at least 1".into()))?;
        if period > Self::MAX_PERIOD {
            // governor keeps the period in nanoseconds (u64) and panics past 584 years.
            return Err(Error::Build(format!(
                "rate limit: period must be at most 365 days, got {}",
                humantime::format_duration(period)
            )));
        }
        let replenish = period / burst.get();
        let quota = Quota::with_period(replenish)
            .ok_or_else(|| Error::Build("rate limit: period must be greater than zero".into()))?
            .allow_burst(burst);
        Ok(RateLimit {
            limiter: RateLimiter::keyed(quota),
            notice: None,
        })
    }

    /// Answer limited events with `text` (otherwise they are dropped silently).
    pub fn notice(mut self, text: impl Into<String>) -> Self {
        self.notice = Some(text.into());
        self
    }
}

#[async_trait]
impl Middleware for RateLimit {
    async fn before(&self, event: &Event) -> Result<Flow> {
        let Some(sender) = event.sender() else {
            return Ok(Flow::Continue);
        };
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        match self
            .limiter
            .check_key(&(event.channel().clone(), sender.id.clone()))
        {
            Ok(()) => Ok(Flow::Continue),
            Err(_) => {
                tracing::debug!(user = %sender.id, "rate limited");
                Ok(Flow::Stop(self.notice.clone().map(Outbound::text)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, Sender};

    fn msg(id: &str, user: &str) -> Event {
        let mut m = Message::text("c", "conv", Sender::user(user), "hi");
        m.id = MessageId::from(id);
        Event::Message(m)
    }

    #[tokio::test]
    async fn dedupe_drops_repeats_and_forgets_after_capacity() {
        let d = Dedupe::new(2, Duration::from_secs(60));
        assert_eq!(d.before(&msg("a", "u")).await.expect("ok"), Flow::Continue);
        assert_eq!(
            d.before(&msg("a", "u")).await.expect("ok"),
            Flow::Stop(None)
        );
        assert_eq!(d.before(&msg("b", "u")).await.expect("ok"), Flow::Continue);
        assert_eq!(d.before(&msg("c", "u")).await.expect("ok"), Flow::Continue);
        // Capacity 2: "a" was evicted.
        assert_eq!(d.before(&msg("a", "u")).await.expect("ok"), Flow::Continue);
    }

    #[tokio::test]
    async fn rate_limit_is_per_user() {
        let r = RateLimit::per_user(2, Duration::from_secs(60))
            .expect("valid")
            .notice("slow down");
        assert_eq!(r.before(&msg("1", "u1")).await.expect("ok"), Flow::Continue);
        assert_eq!(r.before(&msg("2", "u1")).await.expect("ok"), Flow::Continue);
        assert_eq!(
            r.before(&msg("3", "u1")).await.expect("ok"),
            Flow::Stop(Some(Outbound::text("slow down")))
        );
        assert_eq!(r.before(&msg("4", "u2")).await.expect("ok"), Flow::Continue);
        assert!(RateLimit::per_user(0, Duration::from_secs(1)).is_err());
        assert!(RateLimit::per_user(1, Duration::ZERO).is_err());
    }
}
