//! One prompt library shared by every process of a deployment, through the store's
//! key-value space.

use std::path::Path;
use std::sync::{Arc, RwLock};

use flowbot_core::store::KvStore;
use serde_json::{Value, json};

use super::{Outcome, PROMPTS_NAMESPACE, PromptError, PromptLibrary, VersionStats, store};

/// The key-value namespace of the library's revision: one key, `revision`, rewritten with a
/// fresh random value after every change, so that each process can tell with one read
/// whether its copy is current.
pub const REVISION_NAMESPACE: &str = "llm.prompts_revision";

/// The key-value namespace that remembers, per prompt, the hash of the prompt file last
/// applied (so that a file applies again only when it changed).
pub const FILES_NAMESPACE: &str = "llm.prompt_files";

const REVISION_KEY: &str = "revision";

/// A [`PromptLibrary`] kept in the store's key-value space and shared by every process
/// using that store, with the prompts of a folder of files merged in.
///
/// - **Reading** ([`library`](SharedPrompts::library)) costs one key-value read: the
///   library's revision. When another process changed the library since this copy was
///   loaded, the revision differs and the library is loaded again; otherwise the copy in
///   memory is used. Every change made anywhere is therefore seen by the next render in
///   every process.
/// - **Changing** ([`update`](SharedPrompts::update)) applies at once in this process,
///   writes the changed prompt to the store, then a new revision. Changes are serialised
///   within a process; two processes changing *the same prompt* at the same moment can lose
///   one change (the store has no compare-and-set), changes to different prompts never are.
/// - **Files** ([`from_dir`](SharedPrompts::from_dir)) are merged when this process first
///   loads the library from the store: a file that is new, or whose content changed since
///   it was last applied, becomes a new version (when its content differs from the latest)
///   and is activated. A file that did not change leaves the stored prompt alone, so
///   versions, activations, rollbacks and splits made through the API survive restarts;
///   editing the file is how a deployment takes the prompt back.
///
/// Without a store (`None`), the library lives in this process only, starting from the
/// files.
#[derive(Debug)]
pub struct SharedPrompts {
    files: PromptLibrary,
    state: RwLock<State>,
    /// Serialises loads and changes in this process.
    gate: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    library: Arc<PromptLibrary>,
    /// The store's revision when `library` was loaded from it.
    revision: Option<String>,
    loaded: bool,
}

impl Default for SharedPrompts {
    fn default() -> Self {
        SharedPrompts::new(PromptLibrary::new())
    }
}

impl SharedPrompts {
    /// A shared library whose files are `files` (each prompt's active version is its file's
    /// content).
    pub fn new(files: PromptLibrary) -> Self {
        SharedPrompts {
            files,
            state: RwLock::new(State::default()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// A shared library with the prompt files of `dir` ([`PromptLibrary::load_dir`]'s
    /// format). Reads the files now, with blocking I/O: call it at startup.
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let mut files = PromptLibrary::new();
        files.load_dir(dir)?;
        Ok(SharedPrompts::new(files))
    }

    /// The prompts of the files.
    pub fn files(&self) -> &PromptLibrary {
        &self.files
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The library without a store: the files, and the changes made in this process.
    fn local(&self) -> Arc<PromptLibrary> {
        let mut state = self.write();
        if !state.loaded {
            state.library = Arc::new(self.files.clone());
            state.loaded = true;
        }
        state.library.clone()
    }

    /// The library as it stands now in `kv` (loading it again when another process changed
    /// it since), or in this process without a store.
    pub async fn library(
        &self,
        kv: Option<&dyn KvStore>,
    ) -> Result<Arc<PromptLibrary>, PromptError> {
        let Some(kv) = kv else {
            return Ok(self.local());
        };
        let (loaded, cached, library) = {
            let state = self.read();
            (state.loaded, state.revision.clone(), state.library.clone())
        };
        if loaded && read_revision(kv).await? == cached {
            return Ok(library);
        }
        let _gate = self.gate.lock().await;
        self.refresh(kv).await
    }

    /// Load the library from `kv` unless the copy in memory is current; the first load
    /// merges the files. Called with the gate held.
    async fn refresh(&self, kv: &dyn KvStore) -> Result<Arc<PromptLibrary>, PromptError> {
        // Read the revision before the prompts: a change written after this read leaves a
        // newer revision behind, which the next read sees.
        let revision = read_revision(kv).await?;
        let first = {
            let state = self.read();
            if state.loaded && state.revision == revision {
                return Ok(state.library.clone());
            }
            !state.loaded
        };
        let mut library = PromptLibrary::load_from(kv).await?;
        if first && self.apply_files(kv, &mut library).await? {
            write_revision(kv).await?;
        }
        let library = Arc::new(library);
        *self.write() = State {
            library: library.clone(),
            revision,
            loaded: true,
        };
        Ok(library)
    }

    /// Merge the files into `library` (loaded from `kv`), storing each prompt a file
    /// changed; whether any did.
    async fn apply_files(
        &self,
        kv: &dyn KvStore,
        library: &mut PromptLibrary,
    ) -> Result<bool, PromptError> {
        let mut changed = false;
        for file in self.files.prompts.values() {
            let name = file.name();
            let Some(content) = file.version(file.active()) else {
                continue;
            };
            let applied = kv
                .kv_get(FILES_NAMESPACE, name)
                .await?
                .and_then(|v| v.get("hash").and_then(Value::as_str).map(str::to_owned));
            if applied.as_deref() == Some(content.hash.as_str()) && library.get(name).is_some() {
                continue;
            }
            let put = library.put(name, content.content.clone(), content.meta.clone())?;
            library.activate(name, put.version)?;
            save_prompt(kv, library, name).await?;
            kv.kv_set(
                FILES_NAMESPACE,
                name,
                &json!({ "hash": content.hash, "version": put.version, "applied_at": flowbot_core::clock::now() }),
            )
            .await?;
            tracing::info!(prompt = %name, version = put.version, created = put.created, "prompt file applied");
            changed = true;
        }
        Ok(changed)
    }

    /// Change the library with `change` (e.g. `|l| l.put(..)`): at once in this process,
    /// then prompt `name` is written to `kv` with a new revision, which the other processes
    /// pick up. Nothing is written when `change` fails or leaves `name` as it was.
    pub async fn update<T, F>(
        &self,
        kv: Option<&dyn KvStore>,
        name: &str,
        change: F,
    ) -> Result<T, PromptError>
    where
        F: FnOnce(&mut PromptLibrary) -> Result<T, PromptError> + Send,
        T: Send,
    {
        let Some(kv) = kv else {
            self.local();
            let mut state = self.write();
            let mut next = (*state.library).clone();
            let out = change(&mut next)?;
            state.library = Arc::new(next);
            return Ok(out);
        };
        let _gate = self.gate.lock().await;
        let current = self.refresh(kv).await?;
        let mut next = (*current).clone();
        let out = change(&mut next)?;
        if next.get(name) != current.get(name) {
            save_prompt(kv, &next, name).await?;
            write_revision(kv).await?;
            // The cached revision stays the one read before the change, so the next read
            // loads the library again and sees changes other processes made meanwhile.
            self.write().library = Arc::new(next);
        }
        Ok(out)
    }

    /// Add `outcome` to version `version` of `name`'s statistics in `kv`.
    pub async fn record(
        &self,
        kv: &dyn KvStore,
        name: &str,
        version: u32,
        outcome: &Outcome,
    ) -> Result<VersionStats, PromptError> {
        self.library(Some(kv))
            .await?
            .record_outcome(kv, name, version, outcome)
            .await
    }

    /// The statistics of every version of `name` in `kv`.
    pub async fn stats(
        &self,
        kv: &dyn KvStore,
        name: &str,
    ) -> Result<Vec<VersionStats>, PromptError> {
        self.library(Some(kv)).await?.stats(kv, name).await
    }
}

async fn read_revision(kv: &dyn KvStore) -> Result<Option<String>, PromptError> {
    Ok(kv
        .kv_get(REVISION_NAMESPACE, REVISION_KEY)
        .await?
        .map(|v| v.to_string()))
}

async fn write_revision(kv: &dyn KvStore) -> Result<(), PromptError> {
    let revision = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    kv.kv_set(
        REVISION_NAMESPACE,
        REVISION_KEY,
        &json!({ "revision": revision, "at": flowbot_core::clock::now() }),
    )
    .await?;
    Ok(())
}

async fn save_prompt(
    kv: &dyn KvStore,
    library: &PromptLibrary,
    name: &str,
) -> Result<(), PromptError> {
    match library.get(name) {
        Some(p) => store::save_one(kv, p).await,
        None => {
            kv.kv_delete(PROMPTS_NAMESPACE, name).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use flowbot_core::StoreError;

    use super::*;
    use crate::prompt::{PromptContent, PromptContext, VersionMeta};

    /// A key-value store over a map, yielding between calls as a database would.
    #[derive(Default)]
    struct MapKv(Mutex<BTreeMap<(String, String), Value>>);

    #[flowbot_core::async_trait]
    impl KvStore for MapKv {
        async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Value>, StoreError> {
            tokio::task::yield_now().await;
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(&(ns.into(), key.into()))
                .cloned())
        }
        async fn kv_set(&self, ns: &str, key: &str, value: &Value) -> Result<(), StoreError> {
            tokio::task::yield_now().await;
            self.0
                .lock()
                .unwrap()
                .insert((ns.into(), key.into()), value.clone());
            Ok(())
        }
        async fn kv_delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .remove(&(ns.into(), key.into()))
                .is_some())
        }
        async fn kv_list(&self, ns: &str) -> Result<Vec<(String, Value)>, StoreError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    fn files(system: &str) -> PromptLibrary {
        let mut l = PromptLibrary::new();
        l.put(
            "support",
            PromptContent::system(system),
            VersionMeta::new("file", "from the folder"),
        )
        .unwrap();
        l
    }

    async fn system(p: &SharedPrompts, kv: &dyn KvStore) -> String {
        p.library(Some(kv))
            .await
            .unwrap()
            .render("support", "openai/gpt-4o", None, &PromptContext::new())
            .unwrap()
            .system
    }

    #[tokio::test]
    async fn a_change_in_one_process_is_seen_by_the_next_read_in_another() {
        let kv = MapKv::default();
        let a = SharedPrompts::new(files("A1"));
        let b = SharedPrompts::new(files("A1"));
        assert_eq!(system(&a, &kv).await, "A1");
        assert_eq!(system(&b, &kv).await, "A1");
        assert_eq!(
            a.library(Some(&kv))
                .await
                .unwrap()
                .get("support")
                .unwrap()
                .versions()
                .len(),
            1
        );

        let put = a
            .update(Some(&kv), "support", |l| {
                let put = l.put(
                    "support",
                    PromptContent::system("A2"),
                    VersionMeta::default(),
                )?;
                l.activate("support", put.version)?;
                Ok(put)
            })
            .await
            .unwrap();
        assert_eq!(put.version, 2);
        assert_eq!(
            system(&a, &kv).await,
            "A2",
            "at once in the process that changed it"
        );
        assert_eq!(
            system(&b, &kv).await,
            "A2",
            "and in the other at its next read"
        );

        // Changes to different prompts at the same time in two processes both survive.
        let (x, y) = tokio::join!(
            a.update(Some(&kv), "x", |l| l.put(
                "x",
                PromptContent::system("X"),
                VersionMeta::default()
            )),
            b.update(Some(&kv), "y", |l| l.put(
                "y",
                PromptContent::system("Y"),
                VersionMeta::default()
            )),
        );
        x.unwrap();
        y.unwrap();
        for p in [&a, &b] {
            let names: Vec<String> = p
                .library(Some(&kv))
                .await
                .unwrap()
                .names()
                .map(str::to_owned)
                .collect();
            assert_eq!(names, ["support", "x", "y"]);
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_keeps_api_changes_and_a_changed_file_applies_once() {
        let kv = MapKv::default();
        let first = SharedPrompts::new(files("F1"));
        assert_eq!(system(&first, &kv).await, "F1");
        first
            .update(Some(&kv), "support", |l| {
                let put = l.put(
                    "support",
                    PromptContent::system("API"),
                    VersionMeta::default(),
                )?;
                l.activate("support", put.version)
            })
            .await
            .unwrap();

        // A restart with the same file: the API's version stays active.
        let restarted = SharedPrompts::new(files("F1"));
        assert_eq!(system(&restarted, &kv).await, "API");

        // The file changed: it becomes a new active version, once.
        let deployed = SharedPrompts::new(files("F2"));
        assert_eq!(system(&deployed, &kv).await, "F2");
        let lib = deployed.library(Some(&kv)).await.unwrap();
        assert_eq!(lib.get("support").unwrap().active(), 3);
        deployed
            .update(Some(&kv), "support", |l| l.rollback("support"))
            .await
            .unwrap();
        let again = SharedPrompts::new(files("F2"));
        assert_eq!(
            system(&again, &kv).await,
            "API",
            "the rollback survives the restart"
        );
        assert_eq!(
            again
                .library(Some(&kv))
                .await
                .unwrap()
                .get("support")
                .unwrap()
                .versions()
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn a_failed_or_empty_change_writes_nothing() {
        let kv = MapKv::default();
        let p = SharedPrompts::default();
        let err = p
            .update(Some(&kv), "bad", |l| {
                l.put("bad", PromptContent::system("{{ x"), VersionMeta::default())
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bad@v1/system"), "{err}");
        assert!(kv.0.lock().unwrap().is_empty());
        // Without a store the library lives in memory.
        p.update(None, "m", |l| {
            l.put("m", PromptContent::system("M"), VersionMeta::default())
        })
        .await
        .unwrap();
        assert!(p.library(None).await.unwrap().get("m").is_some());
        assert!(kv.0.lock().unwrap().is_empty());
    }
}
