//! # flowbot-server
//!
//! The reference binaries, as a library so tests and applications can start them in-process:
//!
//! - `flowbot-server`: the HTTP API, the channels (web chat, webhooks) and, unless
//!   `server.agent = false` or `--no-agent`, an embedded agent;
//! - `flowbot-agent`: workers and schedules only, against a shared database.
//!
//! Configuration: [`config::Config`]. The default configuration runs the [`demo`] bot.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod demo;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod http;
pub mod keys;
pub mod knowledge;
pub mod llm;
pub mod run;
pub mod secrets;
pub mod tls;

/// The Rust examples of docs/llm.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/llm.md")]
pub struct LlmGuide;

/// The Rust examples of docs/embedding.md, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
pub struct EmbeddingGuide;
