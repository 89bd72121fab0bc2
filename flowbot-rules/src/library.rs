//! Rules from files and from the database together: one [`RuleLibrary`] compiles both into
//! the router's set, edits database rules (the server's `/api/v1/rules`), and reloads when a
//! file changes, when the database's rules change, or when another process says so on the
//! bus.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowbot_core::{CancellationToken, Classifier, SharedKv};
use serde::Serialize;
use serde_json::Value;

use crate::compile::{Origin, Source, read_dir};
use crate::spec::RuleSpec;
use crate::watch::{Reload, snapshot};
use crate::{Error, Plugins, RuleSet, RulesRouter};

/// The key-value namespace that holds the database's rules, one key per rule name.
pub const RULES_NAMESPACE: &str = "flowbot.rules";
/// The bus topic on which a process announces that it changed the database's rules.
pub const RULES_TOPIC: &str = "rules:changed";

/// Where the file rules come from.
#[derive(Debug, Clone)]
pub enum RuleFiles {
    /// The `*.toml` files of a directory, read again on every reload.
    Dir(PathBuf),
    /// Fixed sources (e.g. built into the binary).
    Fixed(Vec<Source>),
}

/// A rule as the API shows it: the rule, and whether it comes from a file or the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleEntry {
    /// The rule as written.
    pub rule: RuleSpec,
    /// `file` or `api`.
    pub source: &'static str,
    /// `path:line` for file rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Rules from files and from the database, compiled into one router.
pub struct RuleLibrary {
    router: Arc<RulesRouter>,
    plugins: Plugins,
    files: RuleFiles,
    store: Option<Arc<dyn SharedKv>>,
    /// One change at a time in this process.
    writing: tokio::sync::Mutex<()>,
    /// Reloads by [`watch`](Self::watch): applied, rejected.
    reloads: [std::sync::atomic::AtomicU64; 2],
    /// The examples the router's classifier last learned.
    learned: tokio::sync::Mutex<Option<BTreeMap<String, Vec<String>>>>,
}

/// How many reloads [`RuleLibrary::watch`] made since the library was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloads {
    /// Changes put in force.
    pub applied: u64,
    /// Changes rejected (the previous rules stayed in force).
    pub rejected: u64,
}

impl std::fmt::Debug for RuleLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleLibrary")
            .field("files", &self.files)
            .field("stored_rules", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl RuleLibrary {
    /// Load the file rules and (with a store) the database's rules, and compile them. The
    /// store keeps the rules stored through [`create`](Self::create) and [`update`](Self::update) in its key-value data and
    /// tells every server of a change on its bus ([`SharedKv`]; an `Arc<dyn Store>`
    /// converts).
    pub async fn open(
        files: RuleFiles,
        store: Option<Arc<dyn SharedKv>>,
        plugins: Plugins,
    ) -> Result<Self, Error> {
        let lib = RuleLibrary {
            router: Arc::new(RulesRouter::new(RuleSet::compile(&[], &plugins)?)),
            plugins,
            files,
            store,
            writing: tokio::sync::Mutex::new(()),
            reloads: Default::default(),
            learned: tokio::sync::Mutex::new(None),
        };
        let set = lib.build(lib.db_rules().await?, None).await?;
        lib.install(set).await?;
        Ok(lib)
    }

    /// The router the bot uses.
    pub fn router(&self) -> Arc<RulesRouter> {
        self.router.clone()
    }

    /// Use `classifier` for `intent` conditions, trained now with the examples of the rules
    /// in force and again each time they change. An error (the classifier refused the
    /// examples) leaves the router without it.
    pub async fn set_classifier(&self, classifier: Arc<dyn Classifier>) -> Result<(), Error> {
        let _one = self.writing.lock().await;
        let set = self.router.current();
        let mut learned = self.learned.lock().await;
        learn(&*classifier, &set).await?;
        *learned = Some(set.intent_examples().clone());
        self.router.set_classifier(Some(classifier));
        Ok(())
    }

    /// Train the router's classifier (if any) with the examples of `set`, unless it learned
    /// those already.
    async fn learn_for(&self, set: &RuleSet) -> Result<(), Error> {
        let Some(c) = self.router.classifier() else {
            return Ok(());
        };
        let mut learned = self.learned.lock().await;
        if learned.as_ref() == Some(set.intent_examples()) {
            return Ok(());
        }
        learn(&*c, set).await?;
        *learned = Some(set.intent_examples().clone());
        Ok(())
    }

    /// Put `set` in force, once the classifier (if any) has learned its examples: a set
    /// whose examples the classifier refuses is not put in force.
    async fn install(&self, set: RuleSet) -> Result<(), Error> {
        self.learn_for(&set).await?;
        self.router.replace(set);
        Ok(())
    }

    async fn db_rules(&self) -> Result<Vec<RuleSpec>, Error> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        store
            .kv_list(RULES_NAMESPACE)
            .await
            .map_err(Error::Store)?
            .into_iter()
            .map(|(name, v)| {
                serde_json::from_value::<RuleSpec>(v).map_err(|e| Error::Rule {
                    rule: name,
                    origin: Origin {
                        file: None,
                        line: None,
                    },
                    message: format!("stored rule is not valid: {e}"),
                })
            })
            .collect()
    }

    /// Compile the files with `db` rules, one of them replaced or added by `candidate`.
    async fn build(
        &self,
        mut db: Vec<RuleSpec>,
        candidate: Option<&RuleSpec>,
    ) -> Result<RuleSet, Error> {
        if let Some(c) = candidate {
            db.retain(|r| r.name != c.name);
            db.push(c.clone());
        }
        let files = self.files.clone();
        let plugins = self.plugins.clone();
        tokio::task::spawn_blocking(move || {
            let sources = match &files {
                RuleFiles::Dir(dir) => read_dir(dir)?,
                RuleFiles::Fixed(s) => s.clone(),
            };
            let api = db
                .into_iter()
                .map(|r| {
                    (
                        r,
                        Origin {
                            file: None,
                            line: None,
                        },
                    )
                })
                .collect();
            RuleSet::compile_with(&sources, api, &plugins)
        })
        .await
        .map_err(|e| Error::Invalid(format!("rule compilation failed: {e}")))?
    }

    /// Read everything again and swap the new set in; the number of rules.
    pub async fn reload(&self) -> Result<usize, Error> {
        let set = self.build(self.db_rules().await?, None).await?;
        let n = set.len();
        self.install(set).await?;
        Ok(n)
    }

    /// Every rule in force, highest priority first.
    pub fn list(&self) -> Vec<RuleEntry> {
        self.router.current().specs().map(entry).collect()
    }

    /// The rule in force with this name.
    pub fn get(&self, name: &str) -> Option<RuleEntry> {
        self.router
            .current()
            .specs()
            .find(|(r, _)| r.name == name)
            .map(entry)
    }

    /// Whether `rule` would compile together with every other rule (replacing the database
    /// rule of the same name, if any).
    pub async fn validate(&self, rule: &RuleSpec) -> Result<(), Error> {
        self.build(self.db_rules().await?, Some(rule))
            .await
            .map(|_| ())
    }

    fn store(&self) -> Result<&Arc<dyn SharedKv>, Error> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::Invalid("rules can only be stored with a database".into()))
    }

    /// Store a new rule; fails if a rule of that name exists (in a file or the database) or
    /// the set would not compile with it.
    pub async fn create(&self, rule: RuleSpec) -> Result<(), Error> {
        let _one = self.writing.lock().await;
        let db = self.db_rules().await?;
        if let Some(e) = self.get(&rule.name) {
            return Err(Error::Conflict(format!(
                "a rule named '{}' exists ({})",
                rule.name,
                e.location
                    .unwrap_or_else(|| "stored through the API".into())
            )));
        }
        if db.iter().any(|r| r.name == rule.name) {
            return Err(Error::Conflict(format!(
                "a rule named '{}' exists",
                rule.name
            )));
        }
        self.write(db, rule).await
    }

    /// Replace the database rule `name`; file rules are edited in their files.
    pub async fn update(&self, name: &str, rule: RuleSpec) -> Result<(), Error> {
        if rule.name != name {
            return Err(Error::Invalid(format!(
                "the body names rule '{}', the path '{name}'; rules are not renamed, delete and create instead",
                rule.name
            )));
        }
        let _one = self.writing.lock().await;
        let db = self.db_rules().await?;
        if !db.iter().any(|r| r.name == name) {
            return Err(self.missing(name));
        }
        self.write(db, rule).await
    }

    fn missing(&self, name: &str) -> Error {
        match self.get(name) {
            Some(RuleEntry {
                location: Some(at), ..
            }) => Error::Conflict(format!(
                "rule '{name}' is defined in {at}; edit the file instead"
            )),
            _ => Error::NotFound(format!("no rule named '{name}' is stored")),
        }
    }

    async fn write(&self, db: Vec<RuleSpec>, rule: RuleSpec) -> Result<(), Error> {
        let store = self.store()?;
        let set = self.build(db, Some(&rule)).await?;
        // Learned before the rule is stored: examples the classifier refuses store nothing.
        self.learn_for(&set).await?;
        let value = serde_json::to_value(&rule).map_err(|e| Error::Invalid(e.to_string()))?;
        store
            .kv_set(RULES_NAMESPACE, &rule.name, &value)
            .await
            .map_err(Error::Store)?;
        self.router.replace(set);
        self.announce().await;
        Ok(())
    }

    /// Delete the database rule `name`.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let _one = self.writing.lock().await;
        let store = self.store()?;
        let db = self.db_rules().await?;
        if !db.iter().any(|r| r.name == name) {
            return Err(self.missing(name));
        }
        let rest: Vec<RuleSpec> = db.into_iter().filter(|r| r.name != name).collect();
        // A rule that others depend on cannot go (a dialog it starts stays, so this only
        // fails if files changed meanwhile); check before deleting anything.
        let set = self.build(rest, None).await?;
        self.learn_for(&set).await?;
        store
            .kv_delete(RULES_NAMESPACE, name)
            .await
            .map_err(Error::Store)?;
        self.router.replace(set);
        self.announce().await;
        Ok(())
    }

    /// Tell the other processes sharing the database to reload.
    async fn announce(&self) {
        if let Some(store) = &self.store
            && let Err(e) = store.publish(RULES_TOPIC, "").await
        {
            tracing::warn!(error = %e, "could not announce a rule change; other processes pick it up at their next check");
        }
    }

    /// How many reloads [`watch`](Self::watch) made: the server exports them as
    /// `flowbot_rules_reloads_total{outcome}`.
    pub fn reloads(&self) -> Reloads {
        use std::sync::atomic::Ordering::Relaxed;
        Reloads {
            applied: self.reloads[0].load(Relaxed),
            rejected: self.reloads[1].load(Relaxed),
        }
    }

    /// Reload on changes until `stop`: when a rule file changes (checked every `interval`),
    /// when the database's rules differ from those compiled (checked every `interval` too),
    /// or at once when another process announces a change on the bus. A set that does not
    /// compile is rejected and the previous set stays in force; `on_reload` hears of every
    /// attempt.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
        on_reload: impl Fn(&Reload) + Send + Sync + 'static,
    ) {
        let dir = match &self.files {
            RuleFiles::Dir(d) => Some(d.clone()),
            RuleFiles::Fixed(_) => None,
        };
        let mut files = dir.as_deref().map(snapshot);
        let mut db = self.db_rules().await.ok();
        let mut bus = self.store.as_ref().map(|s| s.subscribe());
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let announced = async {
                match bus.as_mut() {
                    Some(rx) => loop {
                        match rx.recv().await {
                            Ok(m) if &*m.topic == RULES_TOPIC => return true,
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                return false;
                            }
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let mut changed = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => false,
                told = announced => told,
            };
            if let Some(dir) = &dir {
                let now = snapshot(dir);
                if files.as_ref() != Some(&now) {
                    files = Some(now);
                    changed = true;
                }
            }
            if self.store.is_some() {
                let now = self.db_rules().await.ok();
                if now.is_some() && now != db {
                    db = now;
                    changed = true;
                }
            }
            if !changed {
                continue;
            }
            let outcome = match self.reload().await {
                Ok(n) => Reload::Applied(n),
                Err(e) => Reload::Rejected(e),
            };
            let i = usize::from(matches!(outcome, Reload::Rejected(_)));
            self.reloads[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            on_reload(&outcome);
        }
    }
}

fn entry((rule, origin): (&RuleSpec, &Origin)) -> RuleEntry {
    RuleEntry {
        rule: rule.clone(),
        source: if origin.file.is_some() { "file" } else { "api" },
        location: origin.file.as_ref().map(|_| origin.to_string()),
    }
}

/// Parse a rule from JSON (the API's body), with a clear error.
pub fn rule_from_json(v: Value) -> Result<RuleSpec, Error> {
    serde_json::from_value(v).map_err(|e| Error::Invalid(format!("invalid rule: {e}")))
}

/// Train `classifier` with the examples of `set`, when it declares any.
async fn learn(classifier: &dyn Classifier, set: &RuleSet) -> Result<(), Error> {
    let examples = set.intent_examples();
    if examples.values().all(Vec::is_empty) {
        return Ok(());
    }
    classifier.learn(examples).await.map_err(Error::Classifier)
}
