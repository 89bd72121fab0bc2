//! Evaluation of retrieval: questions whose expected sources are known, and how well
//! [`Knowledge::search`] finds them (recall@k, mean reciprocal rank).
//!
//! Questions come as JSON Lines, one object a line:
//!
//! ```text
//! # blank lines and lines starting with '#' are skipped
//! {"question": "How do I reset my password?", "expected": ["docs/account.md"]}
//! {"question": "Opening hours?", "expected": ["https://shop.example/hours", "faq.md"]}
//! ```
//!
//! A source is a path as it was ingested (a leading `./` does not matter) or a URL; any of a
//! question's expected sources counts.

use std::fmt;

use flowbot_core::vector::MAX_LIMIT;
use serde::{Deserialize, Serialize};

use super::search::snippet;
use super::{Knowledge, KnowledgeError, SearchOptions};

/// A question and the sources that answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalQuestion {
    /// The question, as a user would ask it.
    pub question: String,
    /// The sources (paths as ingested, or URLs) that answer it; any of them counts.
    pub expected: Vec<String>,
}

/// How one question fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// The question.
    pub question: String,
    /// Its expected sources.
    pub expected: Vec<String>,
    /// The top k distinct sources found, best first.
    pub found: Vec<String>,
    /// The rank (from 1) of the first expected source among `found`, if there is one.
    pub rank: Option<usize>,
}

/// How a question set fared: see [`Knowledge::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Questions asked.
    pub questions: usize,
    /// Distinct sources looked at per question.
    pub k: usize,
    /// The share of questions with an expected source among their top k distinct sources
    /// (0 for no questions).
    pub recall_at_k: f64,
    /// The mean over questions of 1 / the rank of the first expected source among the top
    /// k distinct sources (0 for a question without one, and for no questions).
    pub mrr: f64,
    /// Each question, in order.
    pub per_question: Vec<EvalResult>,
}

/// Read questions from JSON Lines: one [`EvalQuestion`] object a line; blank lines and lines
/// starting with `#` are skipped. A line that is not such an object, or whose question is
/// blank or expected list empty, is [`KnowledgeError::Questions`] naming its number.
pub fn parse_questions(text: &str) -> Result<Vec<EvalQuestion>, KnowledgeError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |detail: String| KnowledgeError::Questions {
            line: i + 1,
            detail,
        };
        let q: EvalQuestion = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if q.question.trim().is_empty() {
            return Err(bad("the question is blank".into()));
        }
        if q.expected.iter().all(|s| s.trim().is_empty()) {
            return Err(bad("no expected source".into()));
        }
        out.push(q);
    }
    Ok(out)
}

/// A source as compared: without surrounding blanks and leading `./`.
fn normal(source: &str) -> &str {
    let mut s = source.trim();
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s
}

impl Knowledge {
    /// Ask each question of `collection` (with `options`: filter, threshold, hybrid; the
    /// limit is raised so that `k` distinct sources can be found) and measure how high
    /// their expected sources rank among the distinct sources found: recall@k and mean
    /// reciprocal rank. `k` is 1 to [`MAX_LIMIT`].
    pub async fn evaluate(
        &self,
        collection: &str,
        questions: &[EvalQuestion],
        k: usize,
        options: &SearchOptions,
    ) -> Result<EvalReport, KnowledgeError> {
        if k == 0 || k > MAX_LIMIT {
            return Err(KnowledgeError::Options(format!(
                "evaluation k = {k}: must be 1 to {MAX_LIMIT}"
            )));
        }
        let search = SearchOptions {
            limit: k.saturating_mul(8).clamp(options.limit.max(k), MAX_LIMIT),
            ..options.clone()
        };
        let mut per_question = Vec::with_capacity(questions.len());
        let (mut hits, mut reciprocal) = (0usize, 0.0f64);
        for q in questions {
            let passages = self.search(collection, &q.question, &search).await?;
            let mut found: Vec<String> = Vec::new();
            for p in passages {
                if found.len() == k {
                    break;
                }
                if !found.iter().any(|f| normal(f) == normal(&p.source)) {
                    found.push(p.source);
                }
            }
            let rank = found
                .iter()
                .position(|f| q.expected.iter().any(|e| normal(e) == normal(f)))
                .map(|r| r + 1);
            if let Some(r) = rank {
                hits += 1;
                reciprocal += 1.0 / r as f64;
            }
            per_question.push(EvalResult {
                question: q.question.clone(),
                expected: q.expected.clone(),
                found,
                rank,
            });
        }
        let n = questions.len();
        let share = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
        Ok(EvalReport {
            questions: n,
            k,
            recall_at_k: share(hits as f64),
            mrr: share(reciprocal),
            per_question,
        })
    }
}

impl EvalReport {
    /// The report as a plain table for a terminal: a summary line, then one row per
    /// question (its rank, or `-`, the question, and the sources found, the expected one
    /// starred).
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} question(s), k = {}: recall@{} = {:.3}, MRR = {:.3}\n",
            self.questions, self.k, self.k, self.recall_at_k, self.mrr
        );
        if self.per_question.is_empty() {
            return out;
        }
        let rows: Vec<(String, String, String, String)> = self
            .per_question
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let found: Vec<String> = r
                    .found
                    .iter()
                    .enumerate()
                    .map(|(j, f)| {
                        if Some(j + 1) == r.rank {
                            format!("*{f}")
                        } else {
                            f.clone()
                        }
                    })
                    .collect();
                (
                    (i + 1).to_string(),
                    r.rank.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    snippet(&r.question, 48),
                    if found.is_empty() {
                        "(nothing found)".to_owned()
                    } else {
                        found.join(", ")
                    },
                )
            })
            .collect();
        let width = |f: fn(&(String, String, String, String)) -> &String, head: &str| {
            rows.iter()
                .map(|r| f(r).chars().count())
                .chain([head.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2) = (
            width(|r| &r.0, "#"),
            width(|r| &r.1, "rank"),
            width(|r| &r.2, "question"),
        );
        let line = |a: &str, b: &str, c: &str, d: &str| {
            format!("{a:>w0$}  {b:>w1$}  {c:<w2$}  {d}")
                .trim_end()
                .to_owned()
        };
        out.push('\n');
        out.push_str(&line("#", "rank", "question", "found (* expected)"));
        for r in &rows {
            out.push('\n');
            out.push_str(&line(&r.0, &r.1, &r.2, &r.3));
        }
        out.push('\n');
        out
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}
