//! Prompts: named, versioned minijinja templates, with per-model variants, A/B splits and
//! outcome statistics.
//!
//! A prompt has a system template and optionally a user template, rendered over a
//! [`PromptContext`] (`message`, `session`, `slots`, `vars`, `context`, `now`) with strict
//! undefined values: a name a template uses that the context lacks is an error naming the
//! template (`support@v3/system`) and the line, never an empty string. A *variant* keyed by a
//! model (`openai/gpt-4o`, or just `gpt-4o`) or by a pattern ending in `*` (`anthropic/*`)
//! overrides the system and/or user template for the models it matches; an exact key wins
//! over patterns, and the longest pattern over shorter ones. Model names are
//! [`ChatModel::name`](flowbot_core::llm::ChatModel::name)s, `dialect/model`.
//!
//! A [`PromptLibrary`] keeps every version of every prompt (number, time, author, comment,
//! SHA-256 of the content): [`put`](PromptLibrary::put) adds a version only when the
//! content changed, [`activate`](PromptLibrary::activate) picks the live one,
//! [`rollback`](PromptLibrary::rollback) returns to the one live before, and
//! [`diff`](PromptLibrary::diff) shows what changed between two versions as a unified diff
//! (computed by the `similar` crate, minijinja's author's diff library: Myers' algorithm,
//! which gives the same minimal diffs as `diff -u`).
//!
//! A prompt may split its traffic between versions by weight
//! ([`set_split`](PromptLibrary::set_split)): each user is assigned a version by a hash of
//! the prompt's name and the user's id, so the same user always sees the same version and
//! no randomness is involved at render time. Outcomes (calls, tokens, cost, latency,
//! feedback) are recorded per version in a key-value store
//! ([`record_outcome`](PromptLibrary::record_outcome), [`stats`](PromptLibrary::stats)).
//!
//! The library loads from a folder of TOML files ([`load_dir`](PromptLibrary::load_dir)) and
//! persists as JSON, in core's [`KvStore`](flowbot_core::store::KvStore) under the namespace
//! [`PROMPTS_NAMESPACE`] ([`save_to`](PromptLibrary::save_to),
//! [`load_from`](PromptLibrary::load_from)). A [`SharedPrompts`] keeps one library for every
//! process sharing a store: changes apply at once where they are made and in the other
//! processes at their next render, and a folder's files merge in at start.
//!
//! ```
//! use flowbot_llm::prompt::{PromptContent, PromptContext, PromptLibrary, VersionMeta};
//! let mut prompts = PromptLibrary::new();
//! prompts.put(
//!     "support",
//!     PromptContent::system("You are {{ vars.bot }}. Today is {{ now[:10] }}."),
//!     VersionMeta::new("ana", "first cut"),
//! )?;
//! let cx = PromptContext::new().with_var("bot", "Flo".into());
//! let rendered = prompts.render("support", "openai/gpt-4o-mini", Some("user-42"), &cx)?;
//! assert!(rendered.system.starts_with("You are Flo. Today is 20"));
//! let messages = rendered.messages(); // the system message, then the user's words
//! # assert_eq!(messages.len(), 1);
//! // A typo is an error that names the template and the line.
//! prompts.put("typo", PromptContent::system("Hi\n{{ var.bot }}"), VersionMeta::default())?;
//! let err = prompts.render("typo", "openai/gpt-4o-mini", None, &cx).unwrap_err();
//! assert!(err.to_string().starts_with("template 'typo@v1/system', line 2: "));
//! # Ok::<(), flowbot_llm::prompt::PromptError>(())
//! ```

mod ab;
mod render;
mod shared;
mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use ab::{Outcome, STATS_NAMESPACE, SplitArm, VersionStats};
pub use render::{ContextChunk, MessageVars, PromptContext, Rendered};
pub use shared::{FILES_NAMESPACE, REVISION_NAMESPACE, SharedPrompts};
pub use store::{Loaded, PROMPTS_NAMESPACE};

/// The most activations remembered for [`PromptLibrary::rollback`].
const MAX_HISTORY: usize = 100;

/// The longest prompt name.
const MAX_NAME: usize = 100;

/// What a prompt says: its templates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptContent {
    /// The system message's template.
    pub system: String,
    /// The user message's template, when the prompt writes the user's turn too (a
    /// classification or extraction prompt); `None` when the user's own words follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Overrides for some models, keyed by model name or pattern (`anthropic/*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Variant>,
}

impl PromptContent {
    /// A prompt with only a system template.
    pub fn system(template: impl Into<String>) -> Self {
        PromptContent {
            system: template.into(),
            ..PromptContent::default()
        }
    }

    /// With a user template.
    pub fn with_user(mut self, template: impl Into<String>) -> Self {
        self.user = Some(template.into());
        self
    }

    /// With a variant for `pattern` (a model name, or a prefix ending in `*`).
    pub fn with_variant(mut self, pattern: impl Into<String>, variant: Variant) -> Self {
        self.variants.insert(pattern.into(), variant);
        self
    }

    /// The SHA-256 of the content's JSON, in hex: equal contents, equal hashes.
    pub fn hash(&self) -> String {
        // Field order is fixed and variants are sorted, so the JSON is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }

    /// The content as text, one section per template, for reading and diffs.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut section = |title: &str, body: &str| {
            s.push_str(&format!("=== {title} ===\n"));
            s.push_str(body);
            if !body.ends_with('\n') {
                s.push('\n');
            }
        };
        section("system", &self.system);
        if let Some(u) = &self.user {
            section("user", u);
        }
        for (pattern, v) in &self.variants {
            if let Some(t) = &v.system {
                section(&format!("system [{pattern}]"), t);
            }
            if let Some(t) = &v.user {
                section(&format!("user [{pattern}]"), t);
            }
        }
        s
    }
}

/// A model-specific override of a prompt's templates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Replaces the system template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Replaces the user template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who made a version, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl VersionMeta {
    /// By `author`, saying `comment`.
    pub fn new(author: impl Into<String>, comment: impl Into<String>) -> Self {
        VersionMeta {
            author: Some(author.into()),
            comment: Some(comment.into()),
        }
    }
}

/// One version of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptVersion {
    /// Its number, from 1.
    pub version: u32,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// Who added it, and why.
    #[serde(flatten)]
    pub meta: VersionMeta,
    /// [`PromptContent::hash`] of the content.
    pub hash: String,
    /// The templates.
    pub content: PromptContent,
}

/// A prompt: all its versions, the active one, and its A/B split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    name: String,
    versions: Vec<PromptVersion>,
    active: u32,
    /// Versions active before, the most recent last.
    #[serde(default)]
    previous: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    split: Vec<SplitArm>,
}

impl Prompt {
    /// The prompt's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> &[PromptVersion] {
        &self.versions
    }

    /// The active version's number.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Version `n`.
    pub fn version(&self, n: u32) -> Option<&PromptVersion> {
        self.versions.iter().find(|v| v.version == n)
    }

    /// The latest version.
    pub fn latest(&self) -> Option<&PromptVersion> {
        self.versions.last()
    }

    /// The A/B split, empty when all traffic goes to the active version.
    pub fn split(&self) -> &[SplitArm] {
        &self.split
    }

    fn version_or_err(&self, n: u32) -> Result<&PromptVersion, PromptError> {
        self.version(n).ok_or_else(|| PromptError::NoVersion {
            name: self.name.clone(),
            version: n,
        })
    }

    /// Check what deserialisation cannot: numbering, hashes, the active version, the split.
    fn validate(&self) -> Result<(), PromptError> {
        check_name(&self.name)?;
        let corrupt = |message: String| PromptError::Corrupt {
            what: format!("prompt '{}'", self.name),
            message,
        };
        if self.versions.is_empty() {
            return Err(corrupt("it has no versions".into()));
        }
        for pair in self.versions.windows(2) {
            if pair[0].version >= pair[1].version {
                return Err(corrupt(format!(
                    "version {} comes after version {}",
                    pair[1].version, pair[0].version
                )));
            }
        }
        for v in &self.versions {
            if v.hash != v.content.hash() {
                return Err(corrupt(format!(
                    "version {}'s hash does not match its content",
                    v.version
                )));
            }
        }
        for n in std::iter::once(&self.active).chain(&self.previous) {
            self.version_or_err(*n)?;
        }
        ab::check_split(self, &self.split)?;
        Ok(())
    }
}

/// What [`PromptLibrary::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// The version that holds the content.
    pub version: u32,
    /// False when the content was the latest version's already, and nothing was added.
    pub created: bool,
}

/// Something wrong with a prompt, its templates, or where it is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// A prompt name that is empty, too long, or has characters other than letters, digits,
    /// `_`, `-` and `.`.
    #[error("invalid prompt name '{name}': {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No prompt by that name.
    #[error("no prompt named '{0}'")]
    NotFound(String),
    /// The prompt has no such version.
    #[error("prompt '{name}' has no version {version}")]
    NoVersion {
        /// The prompt.
        name: String,
        /// The version asked for.
        version: u32,
    },
    /// A template does not parse.
    #[error("template '{template}'{}: {message}", line_suffix(*.line))]
    Syntax {
        /// `name@vN/system`, `name@vN/user`, with `[pattern]` for a variant.
        template: String,
        /// The line, from 1.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A template failed to render (an undefined name, a type error, too much work).
    #[error("template '{template}'{}: {message}", line_suffix(*.line))]
    Render {
        /// `name@vN/system`, `name@vN/user`, with `[pattern]` for a variant.
        template: String,
        /// The line, from 1.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A variant's key or content is not usable.
    #[error("prompt '{name}', variant '{pattern}': {reason}")]
    InvalidVariant {
        /// The prompt.
        name: String,
        /// The variant's key.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing to roll back to.
    #[error("prompt '{0}' has no previously active version to roll back to")]
    NoPrevious(String),
    /// An A/B split that cannot be used.
    #[error("prompt '{name}': invalid split: {reason}")]
    InvalidSplit {
        /// The prompt.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A prompt file that cannot be read or parsed.
    #[error("prompt file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Stored data that does not decode or breaks an invariant.
    #[error("{what} is corrupt: {message}")]
    Corrupt {
        /// What was read.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The key-value store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// Prompt names: 1 to 100 letters, digits, `_`, `-`, `.`, not starting with `.`.
fn check_name(name: &str) -> Result<(), PromptError> {
    let bad = |reason: &str| {
        Err(PromptError::InvalidName {
            name: name.chars().take(MAX_NAME + 20).collect(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 100 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return bad(&format!(
            "'{c}' is not allowed (letters, digits, '_', '-' and '.' are)"
        ));
    }
    Ok(())
}

/// Check a content's variant keys and compile every template.
fn check_content(name: &str, version: u32, content: &PromptContent) -> Result<(), PromptError> {
    render::compile(
        &render::template_name(name, version, "system", None),
        &content.system,
    )?;
    if let Some(u) = &content.user {
        render::compile(&render::template_name(name, version, "user", None), u)?;
    }
    for (pattern, v) in &content.variants {
        let bad = |reason: &str| PromptError::InvalidVariant {
            name: name.to_owned(),
            pattern: pattern.clone(),
            reason: reason.to_owned(),
        };
        if pattern.trim().is_empty() || pattern == "*" {
            return Err(bad("a variant needs a model name or a prefix before '*'"));
        }
        if pattern.trim_end_matches('*').contains('*') || pattern.ends_with("**") {
            return Err(bad("'*' may only end the pattern"));
        }
        if v.system.is_none() && v.user.is_none() {
            return Err(bad("it overrides neither the system nor the user template"));
        }
        if let Some(t) = &v.system {
            render::compile(
                &render::template_name(name, version, "system", Some(pattern)),
                t,
            )?;
        }
        if let Some(t) = &v.user {
            render::compile(
                &render::template_name(name, version, "user", Some(pattern)),
                t,
            )?;
        }
    }
    Ok(())
}

/// Every version of every prompt. Plain data: clone it, serialise it, keep it behind a lock
/// in a server. Deserialising checks it as [`from_json`](PromptLibrary::from_json) does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LibraryData")]
pub struct PromptLibrary {
    prompts: BTreeMap<String, Prompt>,
}

/// A library as stored, before its checks.
#[derive(Deserialize)]
struct LibraryData {
    prompts: BTreeMap<String, Prompt>,
}

impl TryFrom<LibraryData> for PromptLibrary {
    type Error = PromptError;

    fn try_from(data: LibraryData) -> Result<Self, PromptError> {
        for (name, p) in &data.prompts {
            if name != &p.name {
                return Err(PromptError::Corrupt {
                    what: format!("prompt '{name}'"),
                    message: format!("it is stored under the name '{}'", p.name),
                });
            }
            p.validate()?;
        }
        Ok(PromptLibrary {
            prompts: data.prompts,
        })
    }
}

impl PromptLibrary {
    /// An empty library.
    pub fn new() -> Self {
        PromptLibrary::default()
    }

    /// The prompt called `name`.
    pub fn get(&self, name: &str) -> Option<&Prompt> {
        self.prompts.get(name)
    }

    /// The prompts' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prompts.keys().map(String::as_str)
    }

    fn prompt(&self, name: &str) -> Result<&Prompt, PromptError> {
        self.prompts
            .get(name)
            .ok_or_else(|| PromptError::NotFound(name.to_owned()))
    }

    fn prompt_mut(&mut self, name: &str) -> Result<&mut Prompt, PromptError> {
        self.prompts
            .get_mut(name)
            .ok_or_else(|| PromptError::NotFound(name.to_owned()))
    }

    /// Store `content` as prompt `name`'s next version, unless it is what the latest version
    /// says already. Every template must parse. A new prompt's first version is active at
    /// once; later versions wait for [`activate`](PromptLibrary::activate) (or a split).
    pub fn put(
        &mut self,
        name: &str,
        content: PromptContent,
        meta: VersionMeta,
    ) -> Result<Put, PromptError> {
        self.put_at(name, content, meta, flowbot_core::clock::now())
    }

    /// [`put`](PromptLibrary::put) with the version's creation time given.
    pub fn put_at(
        &mut self,
        name: &str,
        content: PromptContent,
        meta: VersionMeta,
        created_at: DateTime<Utc>,
    ) -> Result<Put, PromptError> {
        check_name(name)?;
        let hash = content.hash();
        let next = match self.prompts.get(name).and_then(Prompt::latest) {
            Some(latest) if latest.hash == hash => {
                return Ok(Put {
                    version: latest.version,
                    created: false,
                });
            }
            Some(latest) => latest
                .version
                .checked_add(1)
                .ok_or_else(|| PromptError::Corrupt {
                    what: format!("prompt '{name}'"),
                    message: "no version number is left".into(),
                })?,
            None => 1,
        };
        check_content(name, next, &content)?;
        let version = PromptVersion {
            version: next,
            created_at,
            meta,
            hash,
            content,
        };
        match self.prompts.get_mut(name) {
            Some(p) => p.versions.push(version),
            None => {
                self.prompts.insert(
                    name.to_owned(),
                    Prompt {
                        name: name.to_owned(),
                        versions: vec![version],
                        active: next,
                        previous: Vec::new(),
                        split: Vec::new(),
                    },
                );
            }
        }
        Ok(Put {
            version: next,
            created: true,
        })
    }

    /// Make `version` the active one. Activating the active version changes nothing.
    pub fn activate(&mut self, name: &str, version: u32) -> Result<(), PromptError> {
        let p = self.prompt_mut(name)?;
        p.version_or_err(version)?;
        if p.active != version {
            p.previous.push(p.active);
            if p.previous.len() > MAX_HISTORY {
                p.previous.remove(0);
            }
            p.active = version;
        }
        Ok(())
    }

    /// Make the previously active version active again; returns it. Repeated rollbacks walk
    /// further back.
    pub fn rollback(&mut self, name: &str) -> Result<u32, PromptError> {
        let p = self.prompt_mut(name)?;
        let back = p
            .previous
            .pop()
            .ok_or_else(|| PromptError::NoPrevious(name.to_owned()))?;
        p.active = back;
        Ok(back)
    }

    /// A unified diff (three lines of context) from version `a` to version `b` of `name`,
    /// over [`PromptContent::to_text`]; empty when they say the same.
    pub fn diff(&self, name: &str, a: u32, b: u32) -> Result<String, PromptError> {
        let p = self.prompt(name)?;
        let (va, vb) = (p.version_or_err(a)?, p.version_or_err(b)?);
        let (ta, tb) = (va.content.to_text(), vb.content.to_text());
        if ta == tb {
            return Ok(String::new());
        }
        let diff = similar::TextDiff::from_lines(&ta, &tb);
        Ok(diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("{name}@v{a}"), &format!("{name}@v{b}"))
            .to_string())
    }

    /// Render prompt `name` for `model`: the version [`assign`](PromptLibrary::assign)
    /// picks for `user` (the active one without a split or without a user), its variant for
    /// `model` if any.
    pub fn render(
        &self,
        name: &str,
        model: &str,
        user: Option<&str>,
        cx: &PromptContext,
    ) -> Result<Rendered, PromptError> {
        let version = self.assign(name, user)?;
        self.render_version(name, version, model, cx)
    }

    /// Render version `version` of prompt `name` for `model`.
    pub fn render_version(
        &self,
        name: &str,
        version: u32,
        model: &str,
        cx: &PromptContext,
    ) -> Result<Rendered, PromptError> {
        let p = self.prompt(name)?;
        let v = p.version_or_err(version)?;
        render::render(name, version, &v.content, model, cx)
    }
}
