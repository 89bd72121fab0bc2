//! Every recorded provider stream in `tests/streams` (real answers of the OpenAI, Anthropic
//! and Gemini APIs) is parsed through the same driver a live response takes, whole and cut
//! into random small writes, and must give exactly what the reference extractor found.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use bytes::Bytes;
use flowbot_core::llm::{Completion, Usage};
use serde_json::Value;

use crate::transport::{Decoder, Endpoint, decode};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/streams");

impl Decoder for Box<dyn Decoder> {
    fn event(
        &mut self,
        name: Option<&str>,
        data: &str,
        out: &mut Vec<flowbot_core::llm::StreamEvent>,
    ) -> Result<(), crate::transport::DecodeError> {
        (**self).event(name, data, out)
    }
    fn done(&self) -> bool {
        (**self).done()
    }
    fn end(
        &mut self,
        out: &mut Vec<flowbot_core::llm::StreamEvent>,
    ) -> Result<(), crate::transport::DecodeError> {
        (**self).end(out)
    }
}

fn decoder(dialect: &str) -> Option<Box<dyn Decoder>> {
    match dialect {
        #[cfg(feature = "openai")]
        "openai_chat" => Some(crate::openai::chat_decoder()),
        #[cfg(feature = "openai")]
        "openai_responses" => Some(crate::openai::responses_decoder()),
        #[cfg(feature = "anthropic")]
        "anthropic" => Some(crate::anthropic::decoder()),
        #[cfg(feature = "gemini")]
        "gemini" => Some(crate::gemini::decoder()),
        _ => None,
    }
}

/// Split `body` into pieces of 1..=max bytes (anywhere, inside UTF-8 sequences too).
fn pieces(body: &[u8], max: usize, seed: u64) -> Vec<Result<Bytes, String>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let n = if max == 0 {
            body.len()
        } else {
            rng.usize(1..=max)
        }
        .min(body.len() - at);
        out.push(Ok(Bytes::copy_from_slice(&body[at..at + n])));
        at += n;
    }
    out
}

async fn parse(dialect: &str, body: &[u8], max: usize, seed: u64) -> Option<Completion> {
    let decoder = decoder(dialect)?;
    let endpoint = Endpoint::new(format!("{dialect}/recorded"), "http://127.0.0.1");
    let stream = decode(
        endpoint,
        futures_util::stream::iter(pieces(body, max, seed)),
        decoder,
        false,
        tokio::time::Instant::now(),
    );
    Some(Completion::collect(stream).await.unwrap())
}

fn opt_u64(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn check(name: &str, got: &Completion, want: &Value, how: &str) {
    let at = format!("{name} ({how})");
    assert_eq!(
        got.text,
        want["text"].as_str().unwrap_or_default(),
        "{at}: text"
    );
    assert_eq!(
        got.reasoning.as_deref(),
        want["reasoning"].as_str(),
        "{at}: reasoning"
    );
    assert_eq!(
        got.refusal.as_deref(),
        want["refusal"].as_str(),
        "{at}: refusal"
    );
    assert_eq!(
        got.finish_raw.as_deref(),
        want["finish_reason"].as_str(),
        "{at}: finish reason"
    );
    if let Some(id) = want["response_id"].as_str() {
        assert_eq!(got.id.as_deref(), Some(id), "{at}: response id");
    }
    let calls = want["tool_calls"].as_array().unwrap();
    assert_eq!(
        got.tool_calls.len(),
        calls.len(),
        "{at}: number of tool calls"
    );
    for (g, w) in got.tool_calls.iter().zip(calls) {
        if let Some(id) = w["id"].as_str() {
            assert_eq!(g.id, id, "{at}: tool call id");
        } else {
            assert!(
                !g.id.is_empty(),
                "{at}: a call without a provider id gets one"
            );
        }
        assert_eq!(g.name, w["name"].as_str().unwrap(), "{at}: tool name");
        let raw = w["arguments_raw"].as_str().unwrap();
        if w["arguments_valid_json"].as_bool() == Some(true) {
            let want_args: Value = if raw.is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_str(raw).unwrap()
            };
            assert_eq!(g.parsed_arguments().unwrap(), want_args, "{at}: arguments");
        } else {
            assert_eq!(g.arguments, raw, "{at}: partial arguments");
        }
    }
    let u = &want["usage"];
    let got_u = got.usage.unwrap_or_default();
    let want_u = Usage {
        input_tokens: u["input_tokens"].as_u64().unwrap_or_default(),
        output_tokens: u["output_tokens"].as_u64().unwrap_or_default(),
        total_tokens: opt_u64(&u["total_tokens"]),
        cached_input_tokens: opt_u64(&u["cached_input_tokens"]),
        cache_creation_input_tokens: opt_u64(&u["cache_creation_input_tokens"]),
        reasoning_tokens: opt_u64(&u["reasoning_tokens"]),
    };
    assert_eq!(got_u, want_u, "{at}: usage");
}

#[tokio::test]
async fn every_recorded_stream_parses_exactly_whole_and_in_random_pieces() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for (name, case) in cases.as_object().unwrap() {
        let dialect = case["dialect"].as_str().unwrap();
        let body = std::fs::read(format!("{DIR}/{}", case["file"].as_str().unwrap())).unwrap();
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{DIR}/{}", case["expected"].as_str().unwrap()))
                .unwrap(),
        )
        .unwrap();
        for (max, seed) in [(0, 0), (1, 1), (3, 2), (7, 3), (16, 4), (64, 5)] {
            let Some(got) = parse(dialect, &body, max, seed).await else {
                continue;
            };
            check(name, &got, &want, &format!("pieces of up to {max} bytes"));
            checked += 1;
        }
    }
    // Every dialect this build has must have been exercised.
    let built = [
        cfg!(feature = "openai") as usize * 8,
        cfg!(feature = "openai") as usize * 2,
        cfg!(feature = "anthropic") as usize * 3,
        cfg!(feature = "gemini") as usize * 3,
    ]
    .iter()
    .sum::<usize>();
    assert_eq!(checked, built * 6, "cases checked");
}
