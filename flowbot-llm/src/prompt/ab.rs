//! A/B splits between versions, sticky per user, and outcome statistics per version.

use std::time::Duration;

use flowbot_core::llm::Usage;
use flowbot_core::store::KvStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Prompt, PromptError, PromptLibrary};

/// The key-value namespace of outcome statistics: one key per version, `name@version`.
pub const STATS_NAMESPACE: &str = "llm.prompt_stats";

/// One version's share of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitArm {
    /// The version.
    pub version: u32,
    /// Its weight (shares are weight / sum of weights).
    pub weight: u32,
}

pub(super) fn check_split(p: &Prompt, arms: &[SplitArm]) -> Result<(), PromptError> {
    let bad = |reason: String| PromptError::InvalidSplit {
        name: p.name.clone(),
        reason,
    };
    if arms.is_empty() {
        return Ok(());
    }
    let mut seen = std::collections::BTreeSet::new();
    for arm in arms {
        p.version_or_err(arm.version)?;
        if !seen.insert(arm.version) {
            return Err(bad(format!("version {} appears twice", arm.version)));
        }
    }
    if arms.iter().all(|a| a.weight == 0) {
        return Err(bad("every weight is 0".into()));
    }
    Ok(())
}

/// Where `user` falls in `[0, total)`: the first 8 bytes of SHA-256(`name` ‖ `\n` ‖ `user`),
/// big-endian, modulo `total`. Stable across processes, builds and releases.
fn bucket(name: &str, user: &str, total: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(user.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % total.max(1)
}

/// What happened with one rendered version: a model call, or the user's feedback on the
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// A call made with the version.
    Call {
        /// Prompt tokens.
        tokens_in: u64,
        /// Generated tokens.
        tokens_out: u64,
        /// What it cost, in millionths of a dollar.
        cost_micros: u64,
        /// How long it took, in milliseconds.
        latency_ms: u64,
    },
    /// The user rated the answer.
    Feedback {
        /// Thumbs up (true) or down.
        positive: bool,
    },
}

impl Outcome {
    /// A call with the provider's usage, its cost and its duration.
    pub fn call(usage: &Usage, cost_micros: u64, latency: Duration) -> Self {
        Outcome::Call {
            tokens_in: usage.input_tokens,
            tokens_out: usage.output_tokens,
            cost_micros,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The user's feedback.
    pub fn feedback(positive: bool) -> Self {
        Outcome::Feedback { positive }
    }
}

/// Totals of one version's outcomes. Sums saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStats {
    /// The version.
    pub version: u32,
    /// Calls made.
    #[serde(default)]
    pub calls: u64,
    /// Prompt tokens, all calls.
    #[serde(default)]
    pub tokens_in: u64,
    /// Generated tokens, all calls.
    #[serde(default)]
    pub tokens_out: u64,
    /// Cost of all calls, in millionths of a dollar.
    #[serde(default)]
    pub cost_micros: u64,
    /// Latency of all calls added up, in milliseconds.
    #[serde(default)]
    pub latency_ms_total: u64,
    /// Positive feedback.
    #[serde(default)]
    pub positive: u64,
    /// Negative feedback.
    #[serde(default)]
    pub negative: u64,
}

impl VersionStats {
    /// Add one outcome.
    pub fn add(&mut self, outcome: &Outcome) {
        match *outcome {
            Outcome::Call {
                tokens_in,
                tokens_out,
                cost_micros,
                latency_ms,
            } => {
                self.calls = self.calls.saturating_add(1);
                self.tokens_in = self.tokens_in.saturating_add(tokens_in);
                self.tokens_out = self.tokens_out.saturating_add(tokens_out);
                self.cost_micros = self.cost_micros.saturating_add(cost_micros);
                self.latency_ms_total = self.latency_ms_total.saturating_add(latency_ms);
            }
            Outcome::Feedback { positive: true } => self.positive = self.positive.saturating_add(1),
            Outcome::Feedback { positive: false } => {
                self.negative = self.negative.saturating_add(1)
            }
        }
    }

    /// Mean latency per call, in milliseconds (`None` before the first call).
    pub fn mean_latency_ms(&self) -> Option<u64> {
        self.latency_ms_total.checked_div(self.calls)
    }

    /// Share of positive feedback, 0 to 1 (`None` without feedback).
    pub fn positive_rate(&self) -> Option<f64> {
        let all = self.positive.saturating_add(self.negative);
        (all > 0).then(|| self.positive as f64 / all as f64)
    }
}

/// Serialises read-modify-writes of statistics within this process.
static STATS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn stats_key(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}

fn decode_stats(key: &str, value: serde_json::Value) -> Result<VersionStats, PromptError> {
    serde_json::from_value(value).map_err(|e| PromptError::Corrupt {
        what: format!("statistics '{key}' in {STATS_NAMESPACE}"),
        message: e.to_string(),
    })
}

impl PromptLibrary {
    /// Split `name`'s traffic between versions by weight (`(version, weight)` each); users
    /// are assigned by [`assign`](PromptLibrary::assign). An empty list ends the split.
    pub fn set_split(&mut self, name: &str, arms: &[(u32, u32)]) -> Result<(), PromptError> {
        let arms: Vec<SplitArm> = arms
            .iter()
            .map(|&(version, weight)| SplitArm { version, weight })
            .collect();
        let p = self.prompt_mut(name)?;
        check_split(p, &arms)?;
        p.split = arms;
        Ok(())
    }

    /// The version `user` gets: with a split, the arm its bucket falls in (the first 8 bytes
    /// of SHA-256 of `name`, a newline and the user id, modulo the weights' sum, walked
    /// through the arms in order), always the same for the same user; else, or without a
    /// user, the active version.
    pub fn assign(&self, name: &str, user: Option<&str>) -> Result<u32, PromptError> {
        let p = self.prompt(name)?;
        let (Some(user), false) = (user, p.split.is_empty()) else {
            return Ok(p.active);
        };
        let total = p.split.iter().map(|a| u64::from(a.weight)).sum::<u64>();
        let mut at = bucket(name, user, total);
        for arm in &p.split {
            let w = u64::from(arm.weight);
            if at < w {
                return Ok(arm.version);
            }
            at -= w;
        }
        Ok(p.active)
    }

    /// Add `outcome` to version `version` of `name`'s statistics in `kv` (namespace
    /// [`STATS_NAMESPACE`]); returns the new totals.
    ///
    /// A read-modify-write, serialised within this process: concurrent recordings in one
    /// process never lose an update. Several processes writing the same version's
    /// statistics at once can: the store offers no atomic increment, so the last write of
    /// two simultaneous ones wins. Run the recording in one process (e.g. through the task
    /// queue) where exact counts across processes matter.
    pub async fn record_outcome(
        &self,
        kv: &dyn KvStore,
        name: &str,
        version: u32,
        outcome: &Outcome,
    ) -> Result<VersionStats, PromptError> {
        self.prompt(name)?.version_or_err(version)?;
        let key = stats_key(name, version);
        let _guard = STATS_LOCK.lock().await;
        let mut stats = match kv.kv_get(STATS_NAMESPACE, &key).await? {
            Some(v) => decode_stats(&key, v)?,
            None => VersionStats {
                version,
                ..VersionStats::default()
            },
        };
        stats.version = version;
        stats.add(outcome);
        let value = serde_json::to_value(stats).map_err(|e| PromptError::Corrupt {
            what: format!("statistics '{key}'"),
            message: e.to_string(),
        })?;
        kv.kv_set(STATS_NAMESPACE, &key, &value).await?;
        Ok(stats)
    }

    /// Statistics of every version of `name`, oldest version first (zeros for versions
    /// without outcomes).
    pub async fn stats(
        &self,
        kv: &dyn KvStore,
        name: &str,
    ) -> Result<Vec<VersionStats>, PromptError> {
        let p = self.prompt(name)?;
        let mut out = Vec::with_capacity(p.versions.len());
        for v in &p.versions {
            let key = stats_key(name, v.version);
            out.push(match kv.kv_get(STATS_NAMESPACE, &key).await? {
                Some(value) => VersionStats {
                    version: v.version,
                    ..decode_stats(&key, value)?
                },
                None => VersionStats {
                    version: v.version,
                    ..VersionStats::default()
                },
            });
        }
        Ok(out)
    }
}
