//! Shared pieces of the FlowBot examples. The demo bot lives in `flowbot-server` (it is the
//! server's default bot) and is re-exported here.

pub use flowbot_server::demo::{COMMANDS, MAX_REMINDER, demo_router, help_text, parse_remind};

/// The README's code, compiled as a doc test so it stays correct.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub mod store;
