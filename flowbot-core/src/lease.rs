//! Named leases: something that must exist once among every process sharing a store (a
//! platform connection such as Telegram long polling, a Discord gateway shard, Slack Socket
//! Mode) is run by the one process that holds its lease, and taken over by another within a
//! bounded time when the holder dies.
//!
//! A lease is held until it expires; its holder renews it well before then. Every new holder
//! gets a larger `token` (a fencing token), so work can tell a stale holder from the current
//! one. [`hold`] runs work under a lease: it waits to acquire it, runs the work, renews the
//! lease, and stops the work as soon as the lease is lost.
//!
//! Expiry times are written with each process's own clock, so the processes sharing a store
//! must keep their clocks in step (NTP) to well within the lease's ttl.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::StoreError;

/// A lease as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is leased.
    pub name: String,
    /// Who holds it.
    pub owner: String,
    /// Fencing token: larger for every new holder.
    pub token: i64,
}

/// Where leases live.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Take `name` for `owner` for `ttl`, if it is free, expired, or already `owner`'s (which
    /// renews it). `None` while someone else holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// Extend a held lease by `ttl` from now; `false` if it is no longer this holder's (it
    /// expired and was taken, or was released).
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError>;
    /// Give a lease up at once, so another process can take it without waiting for expiry.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
}

/// How [`hold`] holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts without renewal: the longest a dead holder keeps it.
    pub ttl: Duration,
    /// How often the holder renews it, and how often others try to take it.
    pub every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            ttl: Duration::from_secs(15),
            every: Duration::from_secs(5),
        }
    }
}

/// Run `work` whenever this process holds lease `name`, until `shutdown`.
///
/// Until the lease is free it retries every `timing.every`. Holding it, it calls `work` with a
/// token that is cancelled when the lease is lost (a renewal failed or found it taken) or at
/// shutdown, renews every `timing.every`, and on shutdown waits for `work` to return and then
/// releases the lease. If `work` returns on its own while the lease is held, it is started
/// again after `timing.every`. So when a holder dies, another process takes over within
/// `ttl + every`.
pub async fn hold<S, W, F>(
    store: &S,
    name: &str,
    owner: &str,
    timing: LeaseTiming,
    shutdown: CancellationToken,
    mut work: W,
) where
    S: LeaseStore + ?Sized,
    W: FnMut(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let pause = |d: Duration| {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => false,
                () = tokio::time::sleep(d) => true,
            }
        }
    };
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let lease = match store.acquire_lease(name, owner, timing.ttl).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                if !pause(timing.every).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "could not try the lease");
                if !pause(timing.every).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(lease = name, owner, token = lease.token, "lease acquired");
        let stop = shutdown.child_token();
        // Dropping this future (its task aborted) stops the work too: no work without a lease.
        let _stop_on_drop = stop.clone().drop_guard();
        let mut running = tokio::spawn(work(stop.clone()));
        let mut renewed_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(timing.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        let mut lost = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match store.renew_lease(&lease, timing.ttl).await {
                Ok(true) => renewed_at = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = name, owner, "lease lost; stopping its work");
                    lost = true;
                    break;
                }
                // The store is unreachable: go on while the lease is surely still ours, and
                // stop before it can expire under us.
                Err(e) => {
                    tracing::warn!(lease = name, error = %e, "could not renew the lease");
                    if renewed_at.elapsed() + timing.every >= timing.ttl {
                        tracing::warn!(lease = name, owner, "lease may expire; stopping its work");
                        lost = true;
                        break;
                    }
                }
            }
            if running.is_finished() {
                // The work ended while the lease is held: start it again.
                running = tokio::spawn(work(stop.clone()));
            }
        }
        stop.cancel();
        let _ = running.await;
        if !lost && let Err(e) = store.release_lease(&lease).await {
            tracing::warn!(lease = name, error = %e, "could not release the lease");
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}
