//! Abuse limits (`[limits]`): requests per client address on the public endpoints and the
//! admin API, requests per credential, failed authentications per address, and an allow-list
//! of addresses for the admin API. Token buckets through `governor`; a limited request gets
//! `429` with `Retry-After`.
//!
//! The client address is the connection's peer, or, when the peer is one of
//! `trusted_proxies`, the nearest address in `X-Forwarded-For` that is not a trusted proxy.
//! Loopback clients are not limited by address (they are local tools, or a proxy that should
//! be listed in `trusted_proxies`).

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flowbot_channels::problem::Problem;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

/// A token bucket per key: `n` requests at once, refilled at `n` a minute.
pub struct Limiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    /// Checks so far, to look at the table's size only now and then (counting its entries
    /// visits every shard).
    checks: std::sync::atomic::AtomicU32,
}

/// How many checks pass between two looks at a limiter's size.
const SIZE_CHECK_EVERY: u32 = 1024;
/// Keys a limiter holds before the idle ones are dropped.
const MAX_KEYS: usize = 100_000;

impl<K: Hash + Eq + Clone> std::fmt::Debug for Limiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `per_minute` requests a minute per key; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        let n = NonZeroU32::new(per_minute)?;
        Some(Limiter {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
            clock: DefaultClock::default(),
            checks: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Take one request from `key`'s bucket, or say how long until one is there.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(SIZE_CHECK_EVERY) && self.limiter.len() > MAX_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// Failed authentications per client address: once an address has spent its bucket, its
/// credentials are not checked at all until the bucket has a token again.
#[derive(Debug)]
pub struct Failures {
    bucket: Limiter<IpAddr>,
    blocked: std::sync::Mutex<std::collections::HashMap<IpAddr, std::time::Instant>>,
}

impl Failures {
    /// `per_minute` failures a minute per address; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        Some(Failures {
            bucket: Limiter::per_minute(per_minute)?,
            blocked: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// How long `client` must still wait, if it is blocked.
    pub fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&client)?;
        let now = std::time::Instant::now();
        if until > now {
            return Some(until - now);
        }
        blocked.remove(&client);
        None
    }

    /// Count a failure of `client`; the wait when that blocks it.
    pub fn failed(&self, client: IpAddr) -> Option<Duration> {
        let wait = self.bucket.check(&client).err()?;
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() > 100_000 {
            let now = std::time::Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(client, std::time::Instant::now() + wait);
        Some(wait)
    }
}

/// The limits in force.
#[derive(Debug, Default)]
pub struct Limits {
    /// Requests per client address to the public endpoints.
    pub public: Option<Limiter<IpAddr>>,
    /// Requests per client address to the admin API.
    pub api_address: Option<Limiter<IpAddr>>,
    /// Requests per credential (API key, token subject) to the admin API.
    pub api_credential: Option<Limiter<String>>,
    /// Failed authentications per client address; over it, credentials from that address
    /// are not even checked until the bucket refills.
    pub auth_failures: Option<Failures>,
    /// The addresses that may reach the admin API (empty: any).
    pub admin_allow: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, at least 1).
pub fn too_many(wait: Duration, what: &str) -> Response {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1);
    let mut res = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{what}: try again in {secs} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

impl Limits {
    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    pub fn client(&self, req: &Request) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        // The nearest hop a trusted proxy did not add is the client.
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        Some(
            forwarded
                .into_iter()
                .rev()
                .find(|a| !self.trusted(*a))
                .unwrap_or(peer),
        )
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Whether `client` may reach the admin API at all.
    pub fn admin_allowed(&self, client: Option<IpAddr>) -> bool {
        self.admin_allow.is_empty()
            || client.is_some_and(|c| self.admin_allow.iter().any(|n| n.contains(&c)))
    }

    /// Take one request of `client` from `limiter`, loopback clients aside.
    pub fn by_address(
        limiter: Option<&Limiter<IpAddr>>,
        client: Option<IpAddr>,
    ) -> Result<(), Duration> {
        match (limiter, client) {
            (Some(l), Some(c)) if !c.is_loopback() => l.check(&c),
            _ => Ok(()),
        }
    }
}

/// The layer in front of the public endpoints: requests per client address.
pub async fn public(State(limits): State<Arc<Limits>>, mut req: Request, next: Next) -> Response {
    let client = limits.client(&req);
    if let Err(wait) = Limits::by_address(limits.public.as_ref(), client) {
        return too_many(wait, "too many requests from this address");
    }
    if let Some(c) = client {
        // What the web chat counts its sockets by.
        req.extensions_mut()
            .insert(flowbot_channels::web::ClientAddress(c));
    }
    next.run(req).await
}

/// Parse a list of addresses and networks (`10.0.0.0/8`, `192.0.2.7`, `::1`), naming a bad
/// entry.
pub(crate) fn networks(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| {
            let e = e.trim();
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("'{e}' is not an IP address or network (e.g. 10.0.0.0/8)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_empty_and_say_when_they_refill() {
        let l = Limiter::<IpAddr>::per_minute(2).expect("limiter");
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(l.check(&ip).is_ok() && l.check(&ip).is_ok());
        let wait = l.check(&ip).expect_err("limited");
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(Limiter::<IpAddr>::per_minute(0).is_none());
        let res = too_many(Duration::from_millis(1500), "slow down");
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn networks_parse_and_name_bad_entries() {
        let n = networks(&["10.0.0.0/8".into(), "::1".into()]).expect("networks");
        assert!(n[0].contains(&"10.2.3.4".parse::<IpAddr>().expect("ip")));
        let e = networks(&["10.0.0.300".into()]).expect_err("bad");
        assert!(e.contains("'10.0.0.300'"), "{e}");
    }
}
