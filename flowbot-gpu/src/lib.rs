//! Local inference on libtorch for FlowBot: sentence embeddings equal to
//! sentence-transformers', TorchScript models, intent classification and dynamic batching,
//! on the CPU or a CUDA GPU.
//!
//! - [`Encoder`] loads a model directory — sentence-transformers' layout (all-MiniLM-L6-v2
//!   and other BERT-family models in `model.safetensors`), a plain Hugging Face BERT, or a
//!   TorchScript export — and embeds texts exactly as sentence-transformers does (tokenizer,
//!   truncation, pooling, normalisation).
//! - [`Batcher`] runs an encoder on its own thread behind a bounded queue and gathers
//!   concurrent callers' texts into batches; it implements core's
//!   [`Embedder`](flowbot_core::llm::Embedder).
//! - [`ScriptClassifier`] runs a classifier exported to TorchScript (logits per text, its
//!   labels in `config.json` or `labels.json`), batched the same way.
//! - [`IntentClassifier`] labels texts with intents learned from example texts (those the
//!   rules' `intent` conditions declare): embeddings and a softmax head trained in Rust, with
//!   calibrated confidences; it implements core's [`Classifier`](flowbot_core::Classifier).
//!
//! libtorch comes from the PyPI wheel `torch==2.11.0`: build with `LIBTORCH_USE_PYTORCH=1`
//! and the wheel's Python on `PATH`, and run with its `torch/lib` on the library path
//! (`scripts/torch-env` does both). See docs/gpu.md.
//!
//! ```no_run
//! use flowbot_gpu::{BatchOptions, Batcher, Encoder, Options};
//!
//! # async fn run() -> Result<(), flowbot_gpu::Error> {
//! let encoder = Encoder::load("models/all-MiniLM-L6-v2", &Options::cpu().threads(4))?;
//! let batcher = Batcher::start(encoder, BatchOptions::default())?;
//! let v = batcher.embed_one("How do I reset my password?").await?;
//! assert_eq!(v.len(), 384);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod batcher;
mod bert;
mod device;
mod encoder;
mod error;
mod intent;
mod safetensors;
mod script_classifier;

pub use batcher::{BATCH_BUCKETS, BatchMetrics, BatchMetricsSnapshot, BatchOptions, Batcher};
pub use device::{DeviceChoice, Options, Precision};
pub use encoder::{Encoder, TORCHSCRIPT_FILE, TextTokenizer, Tokens};
pub use error::{Error, Result};
pub use intent::{IntentClassifier, OUT_OF_SCOPE, TrainOptions, Training};
pub use script_classifier::ScriptClassifier;

/// Whether libtorch sees a CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// How many CUDA devices libtorch sees.
pub fn cuda_device_count() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}
