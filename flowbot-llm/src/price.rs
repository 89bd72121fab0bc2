//! What a call costs: [`PriceTable`], [`Cost`], and prices in config.

use std::collections::BTreeMap;
use std::ops::Bound;

use flowbot_core::llm::Usage;
use serde::Deserialize;

/// When the default prices were taken from the providers' published price pages.
pub const DEFAULT_PRICES_AS_OF: &str = "2025-10";

/// The highest price accepted, in USD per million tokens.
pub const MAX_PRICE_USD: f64 = 1_000_000.0;

/// A model's prices, each in micro-dollars per million tokens (= pico-dollars per token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// Prompt tokens not read from the cache.
    pub input: u64,
    /// Prompt tokens read from the cache.
    pub cached_input: u64,
    /// Prompt tokens written to the cache (Anthropic).
    pub cache_write: u64,
    /// Generated tokens.
    pub output: u64,
    /// Reasoning (thinking) tokens.
    pub reasoning: u64,
    /// When the figures were taken, e.g. `2025-10` ("published prices as of …").
    pub as_of: Option<String>,
}

impl ModelPrice {
    /// Prices in micro-dollars per million tokens: cached input, cache writes and reasoning
    /// cost as much as input, input and output until set.
    pub fn new(input: u64, output: u64) -> ModelPrice {
        ModelPrice {
            input,
            cached_input: input,
            cache_write: input,
            output,
            reasoning: output,
            as_of: None,
        }
    }

    /// With this cached-input price (micro-dollars per million tokens).
    pub fn cached_input(mut self, price: u64) -> ModelPrice {
        self.cached_input = price;
        self
    }

    /// With this cache-write price (micro-dollars per million tokens).
    pub fn cache_write(mut self, price: u64) -> ModelPrice {
        self.cache_write = price;
        self
    }

    /// Marked with the date the figures were taken.
    pub fn as_of(mut self, date: impl Into<String>) -> ModelPrice {
        self.as_of = Some(date.into());
        self
    }

    /// The cost of `usage`, counted the way `counting` says.
    pub fn cost(&self, counting: Counting, usage: &Usage) -> Cost {
        let cached = usage.cached_input_tokens.unwrap_or(0);
        let written = usage.cache_creation_input_tokens.unwrap_or(0);
        let reasoning = usage.reasoning_tokens.unwrap_or(0);
        let uncached = if counting.input_includes_cache {
            usage
                .input_tokens
                .saturating_sub(cached)
                .saturating_sub(written)
        } else {
            usage.input_tokens
        };
        let output = if counting.output_includes_reasoning {
            usage.output_tokens.saturating_sub(reasoning)
        } else {
            usage.output_tokens
        };
        [
            (uncached, self.input),
            (cached, self.cached_input),
            (written, self.cache_write),
            (output, self.output),
            (reasoning, self.reasoning),
        ]
        .into_iter()
        // A u64 times a u64 always fits a u128.
        .map(|(tokens, price)| Cost::from_pico_usd(u128::from(tokens) * u128::from(price)))
        .fold(Cost::ZERO, Cost::saturating_add)
    }
}

/// How a provider counts tokens in [`Usage`] (see [`PriceTable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counting {
    /// `input_tokens` includes cache reads (and writes): everyone but Anthropic.
    pub input_includes_cache: bool,
    /// `output_tokens` includes reasoning: everyone but Gemini.
    pub output_includes_reasoning: bool,
}

impl Counting {
    /// How the dialect that `model_name` (`dialect/model`) starts with counts; a name
    /// without a known dialect counts as OpenAI does.
    pub fn of(model_name: &str) -> Counting {
        let dialect = model_name.split_once('/').map_or("", |(d, _)| d);
        Counting {
            input_includes_cache: dialect != "anthropic",
            output_includes_reasoning: dialect != "gemini",
        }
    }
}

/// An amount of US dollars, exactly, in pico-dollars (10⁻¹² USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost {
    pico_usd: u128,
}

impl Cost {
    /// Nothing.
    pub const ZERO: Cost = Cost { pico_usd: 0 };

    /// This many pico-dollars.
    pub const fn from_pico_usd(pico_usd: u128) -> Cost {
        Cost { pico_usd }
    }

    /// This many micro-dollars.
    pub const fn from_micro_usd(micro_usd: u64) -> Cost {
        Cost {
            pico_usd: micro_usd as u128 * 1_000_000,
        }
    }

    /// In pico-dollars.
    pub const fn pico_usd(&self) -> u128 {
        self.pico_usd
    }

    /// In whole micro-dollars, rounded down.
    pub const fn micro_usd(&self) -> u128 {
        self.pico_usd / 1_000_000
    }

    /// In dollars, as a float (for display and gauges; sums are kept in [`Cost`]).
    pub fn usd_f64(&self) -> f64 {
        self.pico_usd as f64 / 1e12
    }

    /// The sum, at most [`u128::MAX`] pico-dollars.
    pub const fn saturating_add(self, other: Cost) -> Cost {
        Cost {
            pico_usd: self.pico_usd.saturating_add(other.pico_usd),
        }
    }
}

/// Dollars as an exact decimal, without trailing zeros: `0.0000125`, `3`, `1234.5`.
impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SCALE: u128 = 1_000_000_000_000;
        let whole = self.pico_usd / SCALE;
        let frac = self.pico_usd % SCALE;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:012}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A price in USD per million tokens, as config writes it, in micro-dollars per million.
fn micro(usd: f64) -> Option<u64> {
    if !usd.is_finite() || !(0.0..=MAX_PRICE_USD).contains(&usd) {
        return None;
    }
    // At most 1e12, exactly representable; rounding once removes the float's binary noise
    // (0.075 × 1e6 = 75000.00000000001).
    Some((usd * 1e6).round() as u64)
}

/// Prices by model name, and what a call costs: prices per model in USD per million tokens
/// and exact integer arithmetic over a call's [`Usage`].
///
/// arithmetic over a call's [`Usage`].
///
/// A price is held in micro-dollars per million tokens, which is the same number as
/// pico-dollars per token, so a cost is `tokens × price` pico-dollars, exactly, in a `u128`
/// (a `u64` count times a `u64` price cannot overflow it; the sum of the parts saturates).
/// Prices in config are decimal USD per million tokens, rounded once to the micro-dollar
/// when read.
///
/// ## What is billed, per dialect
///
/// The model's name (`dialect/model`, [`ChatModel::name`](flowbot_core::llm::ChatModel::name))
/// says how its provider counts, following the field docs of [`Usage`]:
///
/// - `openai`, `openai_responses`, and names of no known dialect: `input_tokens` includes
///   the cached tokens, so `input − cached` is billed at `input` and `cached_input_tokens` at
///   `cached_input`; `output_tokens` includes reasoning;
/// - `anthropic`: `input_tokens` excludes the cache and is billed whole at `input`;
///   `cached_input_tokens` (reads) at `cached_input`, `cache_creation_input_tokens` (writes)
///   at `cache_write`; `output_tokens` includes thinking;
/// - `gemini`: `input_tokens` includes the cached tokens, as OpenAI's; `output_tokens`
///   excludes the thoughts, so `reasoning_tokens` are added, at `reasoning` (by default the
///   output price, which is how Google bills thinking).
///
/// Where output includes reasoning, `output − reasoning` is billed at `output` and
/// `reasoning` at `reasoning`, so the two only differ when a price sets `reasoning`.
///
/// Not modelled: long-context tiers (Gemini 2.5 Pro and Claude Sonnet 4.5 above 200k
/// prompt tokens cost more; the table holds the lower tier), batch discounts, Anthropic's
/// one-hour cache writes, Gemini's cache storage by the hour, and audio or image tokens.
///
/// ## Matching
///
/// A name is matched exactly, else by the longest configured prefix: `openai/gpt-4o` prices
/// `openai/gpt-4o-2024-11-20`, while `openai/gpt-4o-mini` has its own entry. A name in the
/// `openai_responses` dialect with no entry of its own is looked up as `openai/…` (the same
/// models, the same prices).
///
/// ## The defaults
///
/// [`PriceTable::with_defaults`] knows well-known current models, each marked with the date
/// its figures were taken from the provider's published price page ([`DEFAULT_PRICES_AS_OF`]).
/// Prices change: check them against the provider's page, and override or add entries in
/// config ([`PricesConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    prices: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// No prices.
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    /// The built-in prices of well-known models, taken from the providers' published price
    /// pages as of [`DEFAULT_PRICES_AS_OF`] (standard tier, short context). Check them:
    /// prices change, and config can override any of them.
    pub fn with_defaults() -> PriceTable {
        // (name, input, cached input, cache write, output), USD per million tokens.
        const DEFAULTS: &[(&str, f64, f64, Option<f64>, f64)] = &[
            ("openai/gpt-4o", 2.50, 1.25, None, 10.00),
            ("openai/gpt-4o-mini", 0.15, 0.075, None, 0.60),
            ("openai/gpt-4.1", 2.00, 0.50, None, 8.00),
            ("openai/gpt-4.1-mini", 0.40, 0.10, None, 1.60),
            // Its own entry, or the gpt-4.1 prefix would price it.
            ("openai/gpt-4.1-nano", 0.10, 0.025, None, 0.40),
            ("openai/o3-mini", 1.10, 0.55, None, 4.40),
            ("openai/text-embedding-3-small", 0.02, 0.02, None, 0.0),
            ("openai/text-embedding-3-large", 0.13, 0.13, None, 0.0),
            ("anthropic/claude-sonnet-4-5", 3.00, 0.30, Some(3.75), 15.00),
            ("anthropic/claude-haiku-4-5", 1.00, 0.10, Some(1.25), 5.00),
            ("anthropic/claude-opus-4-1", 15.00, 1.50, Some(18.75), 75.00),
            ("gemini/gemini-2.5-pro", 1.25, 0.31, None, 10.00),
            ("gemini/gemini-2.5-flash", 0.30, 0.075, None, 2.50),
            // Its own entry, or the gemini-2.5-flash prefix would price it.
            ("gemini/gemini-2.5-flash-lite", 0.10, 0.025, None, 0.40),
            ("gemini/gemini-2.0-flash", 0.10, 0.025, None, 0.40),
            ("gemini/gemini-2.0-flash-lite", 0.075, 0.075, None, 0.30),
        ];
        let mut table = PriceTable::empty();
        for &(name, input, cached, write, output) in DEFAULTS {
            let m = |usd: f64| micro(usd).unwrap_or(0);
            let mut price = ModelPrice::new(m(input), m(output))
                .cached_input(m(cached))
                .as_of(DEFAULT_PRICES_AS_OF);
            if let Some(w) = write {
                price = price.cache_write(m(w));
            }
            table.set(name, price);
        }
        table
    }

    /// The table `config` describes: the defaults (unless `defaults = false`) with its
    /// entries over them.
    pub fn from_config(config: &PricesConfig) -> Result<PriceTable, PriceConfigError> {
        let mut table = if config.defaults {
            PriceTable::with_defaults()
        } else {
            PriceTable::empty()
        };
        for (name, entry) in &config.models {
            table.set(name.clone(), entry.price(name)?);
        }
        Ok(table)
    }

    /// Set (or replace) the price of `name` and every name it is the longest prefix of.
    pub fn set(&mut self, name: impl Into<String>, price: ModelPrice) {
        self.prices.insert(name.into(), price);
    }

    /// The configured names and prices, sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.prices.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The price of `model_name`: exact, else the longest configured prefix; an
    /// `openai_responses/…` name without an entry is looked up as `openai/…`.
    pub fn price(&self, model_name: &str) -> Option<&ModelPrice> {
        self.lookup(model_name).or_else(|| {
            let rest = model_name.strip_prefix("openai_responses/")?;
            self.lookup(&format!("openai/{rest}"))
        })
    }

    fn lookup(&self, name: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.prices.get(name) {
            return Some(p);
        }
        // Every prefix of `name` sorts at or before it: walk back from it.
        self.prices
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(name)))
            .rev()
            .filter(|(k, _)| name.starts_with(k.as_str()))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    }

    /// What `usage` cost on `model_name`, or `None` when the table has no price for it.
    pub fn cost(&self, model_name: &str, usage: &Usage) -> Option<Cost> {
        let price = self.price(model_name)?;
        Some(price.cost(Counting::of(model_name), usage))
    }
}

/// Prices in config.
///
/// ```
/// # use flowbot_llm::{PricesConfig, PriceTable};
/// let config: PricesConfig = toml::from_str(r#"
///     [models."openai/gpt-4o-mini"]
///     input = 0.15
///     cached_input = 0.075
///     output = 0.60
///     as_of = "2025-10-01"
///
///     [models."openai/my-finetune"]
///     input = 0.30
///     output = 1.20
/// "#).unwrap();
/// let table = PriceTable::from_config(&config).unwrap();
/// assert!(table.price("openai/my-finetune").is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    /// Start from the built-in prices (default true).
    #[serde(default = "yes")]
    pub defaults: bool,
    /// Prices by model name (`dialect/model`, or a prefix of such names).
    #[serde(default)]
    pub models: BTreeMap<String, PriceConfig>,
}

impl Default for PricesConfig {
    fn default() -> Self {
        PricesConfig {
            defaults: true,
            models: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// One model's prices in config, in USD per million tokens (0 to 1000000, rounded to the
/// micro-dollar).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Prompt tokens.
    pub input: f64,
    /// Prompt tokens read from the cache (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the cache (default: `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Generated tokens.
    pub output: f64,
    /// Reasoning tokens (default: `output`).
    #[serde(default)]
    pub reasoning: Option<f64>,
    /// When the figures were taken.
    #[serde(default)]
    pub as_of: Option<String>,
}

impl PriceConfig {
    /// The price, each figure checked; errors name the model and the key.
    pub fn price(&self, name: &str) -> Result<ModelPrice, PriceConfigError> {
        if name.trim().is_empty() {
            return Err(PriceConfigError {
                key: "models".to_owned(),
                message: "a model name is empty".to_owned(),
            });
        }
        let check = |field: &str, usd: f64| {
            micro(usd).ok_or_else(|| PriceConfigError {
                key: format!("models.\"{name}\".{field}"),
                message: format!(
                    "{usd}: must be a number of USD per million tokens, 0 to {MAX_PRICE_USD}"
                ),
            })
        };
        let input = check("input", self.input)?;
        let output = check("output", self.output)?;
        Ok(ModelPrice {
            input,
            cached_input: self
                .cached_input
                .map(|v| check("cached_input", v))
                .transpose()?
                .unwrap_or(input),
            cache_write: self
                .cache_write
                .map(|v| check("cache_write", v))
                .transpose()?
                .unwrap_or(input),
            output,
            reasoning: self
                .reasoning
                .map(|v| check("reasoning", v))
                .transpose()?
                .unwrap_or(output),
            as_of: self.as_of.clone(),
        })
    }
}

/// A price in config that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceConfigError {
    /// The key, e.g. `models."openai/x".input`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for PriceConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "prices.{} = {}", self.key, self.message)
    }
}

impl std::error::Error for PriceConfigError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    #[test]
    fn names_match_exactly_else_by_the_longest_prefix() {
        let t = PriceTable::with_defaults();
        let input = |name: &str| t.price(name).map(|p| p.input);
        assert_eq!(input("openai/gpt-4o"), Some(2_500_000));
        assert_eq!(input("openai/gpt-4o-2024-11-20"), Some(2_500_000));
        assert_eq!(input("openai/gpt-4o-mini"), Some(150_000));
        assert_eq!(input("openai/gpt-4o-mini-2024-07-18"), Some(150_000));
        assert_eq!(input("openai/gpt-4.1-nano-2025-04-14"), Some(100_000));
        assert_eq!(input("openai/gpt-4.1-2025-04-14"), Some(2_000_000));
        assert_eq!(
            input("anthropic/claude-sonnet-4-5-20250929"),
            Some(3_000_000)
        );
        assert_eq!(input("gemini/gemini-2.5-flash-lite"), Some(100_000));
        assert_eq!(
            input("gemini/gemini-2.5-flash-preview-09-2025"),
            Some(300_000)
        );
        // The Responses API shares OpenAI's prices.
        assert_eq!(input("openai_responses/gpt-4.1-mini"), Some(400_000));
        // Unknown models, other dialects and shorter names have none.
        assert_eq!(input("openai/gpt-5"), None);
        assert_eq!(input("anthropic/gpt-4o"), None);
        assert_eq!(input("openai/gpt-4"), None);
        assert_eq!(input(""), None);
        for (name, p) in t.entries() {
            assert_eq!(p.as_of.as_deref(), Some(DEFAULT_PRICES_AS_OF), "{name}");
        }
    }

    #[test]
    fn cost_is_exact_per_dialect() {
        let t = PriceTable::with_defaults();
        // gpt-4o-mini: 1000 input of which 400 cached, 500 output of which 100 reasoning.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cached_input_tokens: Some(400),
            reasoning_tokens: Some(100),
            ..Usage::default()
        };
        // Pico-dollars: 600 uncached × 150000 + 400 cached × 75000 + 400 output × 600000 +
        // 100 reasoning × 600000 (reasoning at the output price).
        let c = t.cost("openai/gpt-4o-mini", &u).unwrap();
        assert_eq!(
            c.pico_usd(),
            600 * 150_000 + 400 * 75_000 + 400 * 600_000 + 100 * 600_000
        );
        assert_eq!(c.to_string(), "0.00042");

        // Anthropic: input excludes the cache, writes billed at their own price.
        let u = Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_input_tokens: Some(1000),
            cache_creation_input_tokens: Some(2000),
            ..Usage::default()
        };
        let c = t.cost("anthropic/claude-sonnet-4-5", &u).unwrap();
        // 100 × 3 + 1000 × 0.30 + 2000 × 3.75 + 20 × 15 (µ$ per million → pico per token)
        assert_eq!(
            c.pico_usd(),
            100 * 3_000_000 + 1000 * 300_000 + 2000 * 3_750_000 + 20 * 15_000_000
        );
        assert_eq!(c.to_string(), "0.0084");

        // Gemini: thoughts are not in the output count, and are billed as output.
        let u = Usage {
            input_tokens: 200,
            output_tokens: 50,
            reasoning_tokens: Some(300),
            ..Usage::default()
        };
        let c = t.cost("gemini/gemini-2.5-flash", &u).unwrap();
        assert_eq!(
            c.pico_usd(),
            200 * 300_000 + 50 * 2_500_000 + 300 * 2_500_000
        );
        // The same usage on OpenAI's rules counts reasoning inside the output.
        assert_eq!(
            ModelPrice::new(300_000, 2_500_000)
                .cost(Counting::of("openai/x"), &u)
                .pico_usd(),
            200 * 300_000 + 300 * 2_500_000
        );
        assert_eq!(t.cost("openai/unknown", &u), None);
    }

    #[test]
    fn huge_counts_neither_overflow_nor_panic() {
        let t = PriceTable::with_defaults();
        let u = usage(u64::MAX, u64::MAX);
        let c = t.cost("anthropic/claude-opus-4-1", &u).unwrap();
        let max = u128::from(u64::MAX);
        assert_eq!(c.pico_usd(), max * 15_000_000 + max * 75_000_000);
        // Inconsistent counts (more cached than input) bill nothing negative.
        let u = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: Some(u64::MAX),
            reasoning_tokens: Some(u64::MAX),
            ..Usage::default()
        };
        let c = ModelPrice::new(1, 1).cost(Counting::of("openai/x"), &u);
        assert_eq!(c.pico_usd(), 2 * max);
        // The largest prices and counts saturate the sum instead of wrapping.
        let p = ModelPrice::new(u64::MAX, u64::MAX);
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cached_input_tokens: Some(u64::MAX),
            cache_creation_input_tokens: Some(u64::MAX),
            reasoning_tokens: Some(u64::MAX),
            total_tokens: None,
        };
        assert_eq!(
            p.cost(Counting::of("anthropic/x"), &u).pico_usd(),
            u128::MAX
        );
        assert_eq!(
            Cost::from_pico_usd(u128::MAX).saturating_add(Cost::from_pico_usd(1)),
            Cost::from_pico_usd(u128::MAX)
        );
    }

    #[test]
    fn costs_print_as_exact_decimals() {
        assert_eq!(Cost::ZERO.to_string(), "0");
        assert_eq!(Cost::from_pico_usd(1).to_string(), "0.000000000001");
        assert_eq!(Cost::from_micro_usd(12_500_000).to_string(), "12.5");
        assert_eq!(Cost::from_micro_usd(3_000_000).to_string(), "3");
        assert_eq!(
            Cost::from_pico_usd(1_234_500_000_000_000).to_string(),
            "1234.5"
        );
        assert_eq!(
            Cost::from_pico_usd(u128::MAX).to_string(),
            "340282366920938463463374607.431768211455"
        );
        assert_eq!(Cost::from_micro_usd(1_500_000).micro_usd(), 1_500_000);
    }

    #[test]
    fn config_overrides_adds_and_checks_prices() {
        let c: PricesConfig = toml::from_str(
            r#"
            [models."openai/gpt-4o"]
            input = 5
            output = 20.5
            as_of = "2026-01-01"
            [models."openai/ft:"]
            input = 0.000001
            cached_input = 0
            output = 0.0000004
            "#,
        )
        .unwrap();
        let t = PriceTable::from_config(&c).unwrap();
        let p = t.price("openai/gpt-4o").unwrap();
        assert_eq!(
            *p,
            ModelPrice {
                input: 5_000_000,
                cached_input: 5_000_000,
                cache_write: 5_000_000,
                output: 20_500_000,
                reasoning: 20_500_000,
                as_of: Some("2026-01-01".into()),
            }
        );
        // Other defaults stay; a prefix entry prices every fine-tune.
        assert_eq!(t.price("openai/gpt-4o-mini").unwrap().input, 150_000);
        let ft = t.price("openai/ft:gpt-4o-mini:acme::abc").unwrap();
        assert_eq!((ft.input, ft.cached_input, ft.output), (1, 0, 0));

        let no_defaults: PricesConfig =
            toml::from_str("defaults = false\n[models.\"x/y\"]\ninput = 1\noutput = 2\n").unwrap();
        let t = PriceTable::from_config(&no_defaults).unwrap();
        assert_eq!(t.entries().count(), 1);
        assert_eq!(t.price("openai/gpt-4o"), None);

        let err = |toml: &str| {
            let c: PricesConfig = toml::from_str(toml).unwrap();
            PriceTable::from_config(&c).unwrap_err().to_string()
        };
        assert_eq!(
            err("[models.\"openai/x\"]\ninput = -1\noutput = 1\n"),
            "prices.models.\"openai/x\".input = -1: must be a number of USD per million tokens, 0 to 1000000"
        );
        assert_eq!(
            err("[models.\"openai/x\"]\ninput = 1\noutput = nan\n"),
            "prices.models.\"openai/x\".output = NaN: must be a number of USD per million tokens, 0 to 1000000"
        );
        assert_eq!(
            err("[models.\"openai/x\"]\ninput = 1\noutput = 1\nreasoning = 1e7\n"),
            "prices.models.\"openai/x\".reasoning = 10000000: must be a number of USD per million tokens, 0 to 1000000"
        );
        assert_eq!(
            err("[models.\"\"]\ninput = 1\noutput = 1\n"),
            "prices.models = a model name is empty"
        );
        assert!(
            toml::from_str::<PricesConfig>("[models.\"a/b\"]\ninput = 1\noutput = 1\ncached = 1\n")
                .unwrap_err()
                .to_string()
                .contains("unknown field `cached`")
        );
    }
}
