//! `[gpu]`: local inference on libtorch (flowbot-gpu), in a server built with the `gpu`
//! feature: the sentence encoder the intent classifier runs on.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, err};

/// `[gpu]`. With the `gpu` feature the server loads a sentence encoder (by default
/// all-MiniLM-L6-v2 from `FLOWBOT_MINILM_DIR`, which `scripts/torch-env` exports) and trains
/// the intent classifier of the rules' `intent` conditions with their examples.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Load a model at all (default true; with `false` `intent` conditions never match).
    pub enabled: bool,
    /// The model's directory (sentence-transformers layout, a Hugging Face BERT, or a
    /// TorchScript export; docs/gpu.md). Default: `FLOWBOT_MINILM_DIR`.
    pub model: Option<PathBuf>,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// `f32`, or `f16` / `bf16` on CUDA.
    pub precision: String,
    /// libtorch's CPU threads (default: the number of cores).
    pub threads: Option<usize>,
    /// The most texts per model call.
    pub max_batch: usize,
    /// How long a text waits for others to fill its batch (`2ms`).
    #[serde(with = "humantime_serde")]
    pub max_wait: std::time::Duration,
    /// The most texts waiting for the model; more are refused.
    pub queue: usize,
}

mod humantime_serde {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("'{text}': {e} (e.g. 2ms)")))
    }
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            model: None,
            device: "auto".into(),
            precision: "f32".into(),
            threads: None,
            max_batch: 32,
            max_wait: std::time::Duration::from_millis(2),
            queue: 1024,
        }
    }
}

impl GpuConfig {
    /// The model's directory: `model`, else `FLOWBOT_MINILM_DIR`.
    pub fn model_dir(&self) -> Option<PathBuf> {
        self.model
            .clone()
            .or_else(|| std::env::var_os("FLOWBOT_MINILM_DIR").map(PathBuf::from))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.precision.as_str(), "f32" | "f16" | "bf16") {
            return Err(err(
                "gpu.precision",
                format!("'{}' is not f32, f16 or bf16", self.precision),
            ));
        }
        let device_ok = matches!(self.device.as_str(), "auto" | "cpu" | "cuda")
            || self
                .device
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !device_ok {
            return Err(err(
                "gpu.device",
                format!("'{}' is not auto, cpu, cuda or cuda:N", self.device),
            ));
        }
        if self.threads == Some(0) {
            return Err(err("gpu.threads", "must be at least 1"));
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            return Err(err(
                "gpu.max_batch",
                format!("must be from 1 to 4096, got {}", self.max_batch),
            ));
        }
        if self.queue == 0 {
            return Err(err("gpu.queue", "must be at least 1"));
        }
        if self.max_wait > std::time::Duration::from_secs(10) {
            return Err(err("gpu.max_wait", "must be at most 10s"));
        }
        if !cfg!(feature = "gpu") && self.model.is_some() {
            return Err(err(
                "gpu.model",
                "this flowbot-server was built without the `gpu` feature (cargo build -F gpu)",
            ));
        }
        Ok(())
    }
}
