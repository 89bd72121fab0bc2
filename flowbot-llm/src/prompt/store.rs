//! Persistence: JSON, core's key-value store, and a folder of TOML files.

use std::collections::BTreeMap;
use std::path::Path;

use flowbot_core::store::KvStore;
use serde::Deserialize;
use serde_json::Value;

use super::{
    LibraryData, Prompt, PromptContent, PromptError, PromptLibrary, Variant, VersionMeta,
    check_name,
};

/// The key-value namespace of prompts: one key per prompt (its name), the value its JSON
/// (every version, the active one, the activation history, the split).
pub const PROMPTS_NAMESPACE: &str = "llm.prompts";

/// The largest prompt file read, in bytes.
const MAX_FILE: u64 = 1 << 20;

/// One prompt file, `<name>.toml` (the format is in [`PromptLibrary::load_dir`]'s docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    system: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    variants: BTreeMap<String, Variant>,
}

/// What [`PromptLibrary::load_dir`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The prompt (the file's name without `.toml`).
    pub name: String,
    /// The version that holds the file's content, now active.
    pub version: u32,
    /// Whether the file added that version (false: its content was the latest already).
    pub created: bool,
}

/// Write one prompt to `kv` (namespace [`PROMPTS_NAMESPACE`], its name as the key).
pub(super) async fn save_one(kv: &dyn KvStore, p: &Prompt) -> Result<(), PromptError> {
    let value = serde_json::to_value(p).map_err(|e| PromptError::Corrupt {
        what: format!("prompt '{}'", p.name),
        message: e.to_string(),
    })?;
    kv.kv_set(PROMPTS_NAMESPACE, &p.name, &value).await?;
    Ok(())
}

impl PromptLibrary {
    /// The library as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// A library from [`to_json`](PromptLibrary::to_json)'s JSON, checked (numbering,
    /// hashes, active versions, splits, templates' names).
    pub fn from_json(value: Value) -> Result<PromptLibrary, PromptError> {
        let data: LibraryData =
            serde_json::from_value(value).map_err(|e| PromptError::Corrupt {
                what: "the prompt library's JSON".into(),
                message: e.to_string(),
            })?;
        PromptLibrary::try_from(data)
    }

    /// Write every prompt to `kv` (namespace [`PROMPTS_NAMESPACE`], one key per prompt).
    /// Prompts stored there that this library lacks are left alone.
    pub async fn save_to(&self, kv: &dyn KvStore) -> Result<(), PromptError> {
        for p in self.prompts.values() {
            save_one(kv, p).await?;
        }
        Ok(())
    }

    /// The library stored in `kv` by [`save_to`](PromptLibrary::save_to), checked as
    /// [`from_json`](PromptLibrary::from_json) checks.
    pub async fn load_from(kv: &dyn KvStore) -> Result<PromptLibrary, PromptError> {
        let mut library = PromptLibrary::new();
        for (key, value) in kv.kv_list(PROMPTS_NAMESPACE).await? {
            let p: Prompt = serde_json::from_value(value).map_err(|e| PromptError::Corrupt {
                what: format!("prompt '{key}' in {PROMPTS_NAMESPACE}"),
                message: e.to_string(),
            })?;
            if p.name != key {
                return Err(PromptError::Corrupt {
                    what: format!("prompt '{key}' in {PROMPTS_NAMESPACE}"),
                    message: format!("it holds the prompt '{}'", p.name),
                });
            }
            p.validate()?;
            library.prompts.insert(key, p);
        }
        Ok(library)
    }

    /// Load every `<name>.toml` file of `dir` (other files are ignored): each file's content
    /// becomes a new version of its prompt when it differs from the latest, and the file's
    /// version is activated, so the folder says what is live. Either every file loads or
    /// nothing changes. Unknown keys are errors (a typo is not silently a missing template).
    ///
    /// ```toml
    /// # support.toml
    /// author = "ana"              # optional, recorded with a new version
    /// comment = "shorter answers" # optional
    /// system = """
    /// You are {{ vars.bot }}, the support assistant of {{ vars.company }}.
    /// """
    /// user = "{{ message.text }}" # optional
    ///
    /// [variants."anthropic/*"]    # optional, any number: system and/or user
    /// system = "You are {{ vars.bot }}. Answer in two sentences at most."
    /// ```
    ///
    /// A server that also persists the library loads the store first
    /// ([`load_from`](PromptLibrary::load_from)), then the folder: versions made through the
    /// API are kept, and files whose content changed become new active versions.
    /// [`SharedPrompts`](super::SharedPrompts) does this for every process of a store,
    /// applying each file only when it changed since it was last applied.
    ///
    /// Reads files with blocking I/O: call it at startup, or inside
    /// `tokio::task::spawn_blocking`.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<Loaded>, PromptError> {
        let file_err = |path: &Path, message: String| PromptError::File {
            path: path.display().to_string(),
            message,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| file_err(dir, e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        let mut next = self.clone();
        let mut loaded = Vec::with_capacity(files.len());
        for path in files {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| file_err(&path, "the file name is not UTF-8".into()))?
                .to_owned();
            check_name(&name).map_err(|e| file_err(&path, e.to_string()))?;
            let size = std::fs::metadata(&path)
                .map_err(|e| file_err(&path, e.to_string()))?
                .len();
            if size > MAX_FILE {
                return Err(file_err(
                    &path,
                    format!("{size} bytes is over the limit of {MAX_FILE}"),
                ));
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| file_err(&path, e.to_string()))?;
            let file: PromptFile =
                toml::from_str(&text).map_err(|e| file_err(&path, e.to_string()))?;
            let content = PromptContent {
                system: file.system,
                user: file.user,
                variants: file.variants,
            };
            let meta = VersionMeta {
                author: file.author,
                comment: file.comment,
            };
            let put = next.put(&name, content, meta)?;
            next.activate(&name, put.version)?;
            loaded.push(Loaded {
                name,
                version: put.version,
                created: put.created,
            });
        }
        *self = next;
        Ok(loaded)
    }
}
