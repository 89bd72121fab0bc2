//! Citations: passages as numbered sources in a prompt, and the sources an answer cites.

use serde::{Deserialize, Serialize};

use super::search::Passage;
use crate::context::TokenCounter;

/// The instructions put before the sources in the system prompt.
pub const CITE_INSTRUCTIONS: &str = "Answer from the numbered sources below. After each \
statement taken from a source, cite it by its number in brackets, like [1]. If the sources \
do not hold the answer, say that you do not know; do not invent one.";

/// A source given to the model: what the answer's list shows for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citation {
    /// Its number in the prompt, from 1.
    pub n: usize,
    /// Its document's title.
    pub title: String,
    /// Its document's path or URL.
    pub source: String,
    /// Its document's URL, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Its section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

impl Citation {
    /// `[n] Title — link-or-source, page N`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "[{}] {} — {}",
            self.n,
            self.title,
            self.url.as_deref().unwrap_or(&self.source)
        );
        if let Some(page) = self.page {
            line.push_str(&format!(", page {page}"));
        }
        line
    }
}

/// `Title — section — source, page N` for a passage.
pub(crate) fn label(p: &Passage) -> String {
    let mut s = p.title.clone();
    if let Some(section) = &p.section
        && section != &p.title
    {
        s.push_str(" — ");
        s.push_str(section);
    }
    s.push_str(" — ");
    s.push_str(p.url.as_deref().unwrap_or(&p.source));
    if let Some(page) = p.page {
        s.push_str(&format!(", page {page}"));
    }
    s
}

/// The block of numbered sources for a system prompt, [`CITE_INSTRUCTIONS`] first, taking
/// passages best first while they fit in `budget` tokens as `counter` counts them (the
/// ones that do not fit, the lowest ranked, are left out); and the citations of those
/// taken. No passage fits: an empty block and no citations.
pub fn sources_prompt(
    passages: &[Passage],
    counter: &dyn TokenCounter,
    budget: usize,
) -> (String, Vec<Citation>) {
    let mut block = format!("{CITE_INSTRUCTIONS}\n\nSources:");
    let mut used = counter.count_text(&block);
    let mut citations = Vec::new();
    for p in passages {
        let n = citations.len() + 1;
        let entry = format!("\n\n[{n}] {}\n{}", label(p), p.text.trim());
        let cost = counter.count_text(&entry);
        if used + cost > budget {
            break;
        }
        used += cost;
        block.push_str(&entry);
        citations.push(Citation {
            n,
            title: p.title.clone(),
            source: p.source.clone(),
            url: p.url.clone(),
            page: p.page,
            section: p.section.clone(),
        });
    }
    if citations.is_empty() {
        return (String::new(), citations);
    }
    (block, citations)
}

/// The source numbers `answer` cites (`[1]`, `[1, 3]`, `[2][3]`), from 1 to `max`, in
/// increasing order, each once.
pub fn cited(answer: &str, max: usize) -> Vec<usize> {
    let mut found = std::collections::BTreeSet::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        if !inside.is_empty()
            && inside.len() <= 40
            && inside
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
        {
            for part in inside.split(',') {
                if let Ok(n) = part.trim().parse::<usize>()
                    && (1..=max).contains(&n)
                {
                    found.insert(n);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// `answer` followed by the list of the sources it cites (`Sources:` then one
/// [`Citation::line`] each); `answer` as it is when it cites none.
pub fn sources_reply(answer: &str, citations: &[Citation]) -> String {
    let numbers = cited(answer, citations.len());
    if numbers.is_empty() {
        return answer.to_owned();
    }
    let mut out = answer.trim_end().to_owned();
    out.push_str("\n\nSources:");
    for n in numbers {
        if let Some(c) = citations.iter().find(|c| c.n == n) {
            out.push('\n');
            out.push_str(&c.line());
        }
    }
    out
}

/// The answer when no passage is found (or none reaches the threshold).
pub const DEFAULT_DONT_KNOW: &str =
    "I don't know: I found nothing about that in the knowledge base.";

/// How an [`Agent`](crate::Agent) answers from the knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeOptions {
    /// The collection searched when an ask names none; `None`: only asks naming a
    /// collection use the knowledge base.
    pub collection: Option<String>,
    /// How passages are searched (limit, filter, threshold, hybrid).
    pub search: super::SearchOptions,
    /// Most tokens the sources may take in the prompt (less when the context window has
    /// less room left); the lowest-ranked passages that do not fit are left out.
    pub max_tokens: usize,
    /// The answer, without calling the model, when no passage is found.
    pub dont_know: String,
}

impl Default for KnowledgeOptions {
    fn default() -> Self {
        KnowledgeOptions {
            collection: None,
            search: super::SearchOptions::default(),
            max_tokens: 4_000,
            dont_know: DEFAULT_DONT_KNOW.to_owned(),
        }
    }
}
