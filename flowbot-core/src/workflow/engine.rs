//! The engine: applies definitions, starts runs, executes each node as a task on the durable
//! queue, decides what runs next inside the store's transaction, and answers for runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::compile::{CheckContext, Kind, Problem, Workflow};
use super::script::ScriptEngine;
use super::spec::{Join, TriggerSpec, WorkflowSpec};
use super::store::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeStatus, ParentRef,
    Plan, RunEnd, RunFilter, RunRecord, RunStatus, StartNode, WORKFLOW_NODE_TASK,
    WORKFLOW_RESUME_TASK, WORKFLOW_START_TASK, WorkflowRecord,
};
use super::template;

mod execute;
mod plan;
mod tasks;

use crate::action::{ActionContext, ActionRegistry};
use crate::channel::Senders;
use crate::error::{StoreError, TaskError};
use crate::message::Target;
use crate::store::{Page, Store};
use crate::task::{
    KindOptions, NewTask, RetryPolicy, ScheduleDef, TaskContext, TaskId, TaskRegistry,
    typed_handler,
};
use execute::*;
use plan::*;

/// Task kind a cron trigger's schedule enqueues. Payload: `{"workflow": name, "input": {..}}`.
pub const WORKFLOW_CRON_TASK: &str = "flowbot.workflow.cron";
/// Task kind `publish_event` enqueues. Payload: `{"name": event, "payload": {..}}`.
pub const WORKFLOW_EVENT_TASK: &str = "flowbot.workflow.event";

/// Task kind that ends a wait node whose event did not come in time. Payload:
/// `{"run": id, "node": id, "event": name, "key": key}`.
pub const WORKFLOW_WAIT_TIMEOUT_TASK: &str = "flowbot.workflow.wait_timeout";

/// kv namespace of wait nodes waiting for an event (`<event>:<key>` → run and node).
const WAITS: &str = "flowbot.workflow.waits";
/// kv namespace of keyed events that came before their wait node (`<event>:<key>` → payload).
const EARLY_EVENTS: &str = "flowbot.workflow.events";

/// Prefix of the schedules cron triggers register (`workflow:<name>:<trigger index>`).
const SCHEDULE_PREFIX: &str = "workflow:";

/// Errors of the workflow engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The definition could not be parsed.
    #[error("the workflow definition could not be read: {0}")]
    Parse(String),
    /// The definition has problems; each names the node and the field.
    #[error("the workflow is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
    /// No such workflow or run.
    #[error("{0}")]
    NotFound(String),
    /// A run's inputs do not match the workflow's inputs.
    #[error("invalid inputs for workflow '{workflow}': {detail}")]
    Inputs {
        /// The workflow.
        workflow: String,
        /// What is wrong.
        detail: String,
    },
    /// The operation does not apply to the run in its current status.
    #[error("{0}")]
    State(String),
    /// The engine is not attached to a running bot yet.
    #[error("the workflow engine is not running: add it to a Bot with .workflows(..)")]
    NotRunning,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A [`SecretSource`] failed as a whole (its reasons name secrets, never values).
    #[error("secret source: {0}")]
    Secrets(String),
}

/// Named secrets for templates (`{{ secrets.NAME }}`) and hook triggers. Values never appear
/// in run records, logs or `Debug` output.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
    /// Stored secrets that could not be read, with why (never a value).
    unreadable: Arc<BTreeMap<String, String>>,
}

impl Secrets {
    /// Secrets from name → value.
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Secrets {
            values: Arc::new(map),
            unreadable: Arc::default(),
        }
    }

    /// The value of a secret.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Why a stored secret has no value here (it could not be decrypted, say), if it has none
    /// for that reason.
    pub fn unreadable(&self, name: &str) -> Option<&str> {
        self.unreadable.get(name).map(String::as_str)
    }

    /// The names of the secrets.
    pub fn names(&self) -> BTreeSet<String> {
        self.values.keys().cloned().collect()
    }

    /// `stored` together with `self`; a name in both keeps `self`'s value.
    fn over(&self, stored: SourceSecrets) -> Secrets {
        let mut values = stored.values;
        values.extend(self.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut unreadable = stored.unreadable;
        unreadable.retain(|name, _| !values.contains_key(name));
        Secrets {
            values: Arc::new(values),
            unreadable: Arc::new(unreadable),
        }
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

/// What a [`SecretSource`] holds now: the values it could read, and for each secret it could
/// not (no key for it, altered in the database), why, naming it and never a value.
#[derive(Default)]
pub struct SourceSecrets {
    /// Name → value.
    pub values: BTreeMap<String, String>,
    /// Name → why it could not be read.
    pub unreadable: BTreeMap<String, String>,
}

impl std::fmt::Debug for SourceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecrets")
            .field("values", &self.values.keys())
            .field("unreadable", &self.unreadable)
            .finish()
    }
}

/// Secrets kept outside the configuration, which may change while the engine runs: those
/// stored through the API (`flowbot_core::secrets::SecretStore`, with the `secrets` feature).
///
/// The engine reads the source each time it needs secrets (a node about to run, a definition
/// being checked, a hook trigger being verified), so a secret stored or deleted by any process
/// sharing the database counts from the next node on. A configured secret wins over a stored
/// one of the same name. A node that uses a secret the source could not read fails with the
/// source's reason; the other nodes run.
#[async_trait::async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot secret source",
    note = "use `flowbot_core::secrets::SecretStore` (feature `secrets`), or implement `SecretSource`"
)]
pub trait SecretSource: Send + Sync + 'static {
    /// The names of the secrets, without their values.
    async fn names(&self) -> Result<BTreeSet<String>, WorkflowError>;
    /// Every secret's value, or why it cannot be read.
    async fn values(&self) -> Result<SourceSecrets, WorkflowError>;
}

/// What applying a definition did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The workflow.
    pub name: String,
    /// Its version now.
    pub version: u32,
    /// False when the definition was the same as the latest version.
    pub created: bool,
}

/// A run with its node timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunRecord,
    /// Its nodes, in the order they were queued.
    pub nodes: Vec<NodeRecord>,
}

/// Counts and durations over a time window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// How many, by status.
    pub counts: BTreeMap<String, u64>,
    /// Completed / (completed + failed), when any finished that way.
    pub success_rate: Option<f64>,
    /// Median duration of the finished ones, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile duration of the finished ones, in milliseconds.
    pub p95_ms: Option<f64>,
}

/// Analytics of one workflow over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analytics {
    /// The workflow.
    pub workflow: String,
    /// Window start (runs created at or after).
    pub since: DateTime<Utc>,
    /// Window end (runs created before).
    pub until: DateTime<Utc>,
    /// Over runs.
    pub runs: Stats,
    /// Over node executions, by node id.
    pub nodes: BTreeMap<String, Stats>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeTask {
    run: String,
    node: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunTask {
    run: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ResumeTask {
    run: String,
    node: String,
    child: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CronTask {
    workflow: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    cron: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct EventTask {
    name: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct WaitTimeoutTask {
    run: String,
    node: String,
    event: String,
    key: String,
}

/// The workflow engine. Create it with [`Workflows::new`], give it to the bot builder with
/// `.workflows(..)`, and keep the `Arc` the bot hands back to apply definitions and start runs.
pub struct Workflows {
    store: Arc<dyn Store>,
    scripts: Option<Arc<dyn ScriptEngine>>,
    secrets: Secrets,
    source: Option<Arc<dyn SecretSource>>,
    attached: OnceLock<(Arc<ActionRegistry>, Arc<Senders>)>,
    cache: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
    /// Bumped whenever this engine records a node's end or a run's start or cancellation:
    /// what [`Workflows::wait_for`] wakes on.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows")
            .field("store", &self.store.backend())
            .field("scripts", &self.scripts.is_some())
            .field("secrets", &self.secrets)
            .field("secret_source", &self.source.is_some())
            .finish()
    }
}

fn redacted(mut v: Value, secrets: &Secrets) -> Value {
    template::redact(&mut v, &secrets.values.iter());
    v
}

/// A run id derived from a trigger's task, so a task delivered twice starts one run.
fn derived_run_id(key: &str, workflow: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{key}/{workflow}").as_bytes(),
    )
    .to_string()
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank.min(sorted.len() - 1)).copied()
}

fn stats<'a>(items: impl Iterator<Item = (&'a str, Option<f64>)>) -> Stats {
    let mut counts = BTreeMap::new();
    let mut durations = Vec::new();
    for (status, d) in items {
        *counts.entry(status.to_owned()).or_insert(0u64) += 1;
        if let Some(d) = d {
            durations.push(d);
        }
    }
    durations.sort_by(f64::total_cmp);
    let (ok, failed) = (
        counts.get("completed").copied().unwrap_or(0),
        counts.get("failed").copied().unwrap_or(0),
    );
    Stats {
        success_rate: (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64),
        p50_ms: percentile(&durations, 0.5),
        p95_ms: percentile(&durations, 0.95),
        counts,
    }
}

fn millis(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<f64> {
    Some((b? - a?).num_microseconds()? as f64 / 1000.0)
}

impl Workflows {
    /// An engine on `store`, without scripts or secrets.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Workflows {
            store,
            scripts: None,
            secrets: Secrets::default(),
            source: None,
            attached: OnceLock::new(),
            cache: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Run condition and script nodes with `engine` (e.g. `flowbot-rules`' rhai engine).
    pub fn with_scripts(mut self, engine: Arc<dyn ScriptEngine>) -> Self {
        self.scripts = Some(engine);
        self
    }

    /// Named secrets for templates and hook triggers (a server's `[secrets]`). They win over
    /// a source's secrets of the same name.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Secrets that may change while the engine runs (stored through the API), read on each
    /// use; see [`SecretSource`].
    pub fn with_secret_source(mut self, source: Arc<dyn SecretSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// The secrets given with [`with_secrets`](Self::with_secrets).
    pub fn configured_secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Every secret as of now: the source's, and the configured ones over them.
    pub async fn secrets(&self) -> Result<Secrets, WorkflowError> {
        match &self.source {
            None => Ok(self.secrets.clone()),
            Some(source) => Ok(self.secrets.over(source.values().await?)),
        }
    }

    /// The names of every secret as of now.
    async fn secret_names(&self) -> Result<BTreeSet<String>, WorkflowError> {
        let mut names = match &self.source {
            None => BTreeSet::new(),
            Some(source) => source.names().await?,
        };
        names.extend(self.secrets.names());
        Ok(names)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Called by the bot builder once the action registry exists.
    pub(crate) fn attach(&self, actions: Arc<ActionRegistry>, senders: Arc<Senders>) {
        let _ = self.attached.set((actions, senders));
    }

    fn actions(&self) -> Result<&(Arc<ActionRegistry>, Arc<Senders>), WorkflowError> {
        self.attached.get().ok_or(WorkflowError::NotRunning)
    }

    /// Check a definition fully against the registered actions, the script engine and the
    /// secrets, and (with the store) its sub-workflows.
    pub async fn check(&self, spec: WorkflowSpec) -> Result<Workflow, WorkflowError> {
        let (actions, _) = self.actions()?;
        let names = self.secret_names().await?;
        let cx = CheckContext {
            actions,
            scripts: self.scripts.as_deref(),
            secrets: &names,
        };
        let wf = Workflow::check(spec, cx).map_err(WorkflowError::Invalid)?;
        let mut problems = Vec::new();
        for (node, sub) in wf.sub_workflows() {
            if let Some(message) = self.sub_workflow_problem(wf.name(), sub).await? {
                problems.push(Problem {
                    node: Some(node.to_owned()),
                    field: "workflow".into(),
                    message,
                });
            }
        }
        if problems.is_empty() {
            Ok(wf)
        } else {
            Err(WorkflowError::Invalid(problems))
        }
    }

    /// Why `sub` cannot be a sub-workflow of `root`: unknown, or it leads back to `root`.
    async fn sub_workflow_problem(
        &self,
        root: &str,
        sub: &str,
    ) -> Result<Option<String>, WorkflowError> {
        if sub == root {
            return Ok(Some(format!("workflow `{root}` cannot run itself")));
        }
        let mut stack = vec![(sub.to_owned(), vec![root.to_owned(), sub.to_owned()])];
        let mut seen = BTreeSet::new();
        let mut first = true;
        while let Some((name, trail)) = stack.pop() {
            let Some(rec) = self.store.get_workflow(&name, None).await? else {
                return Ok(Some(if first {
                    format!("there is no workflow `{name}`; apply it first")
                } else {
                    format!(
                        "workflow `{name}` (reached through {}) does not exist",
                        trail.join(" -> ")
                    )
                }));
            };
            first = false;
            if !seen.insert(name.clone()) {
                continue;
            }
            let Ok(spec) = WorkflowSpec::from_value(rec.definition) else {
                continue;
            };
            let Ok(wf) = Workflow::load(spec) else {
                continue;
            };
            for (_, next) in wf.sub_workflows() {
                let mut t = trail.clone();
                t.push(next.to_owned());
                if next == root {
                    return Ok(Some(format!(
                        "sub-workflows make a cycle: {}",
                        t.join(" -> ")
                    )));
                }
                stack.push((next.to_owned(), t));
            }
        }
        Ok(None)
    }

    /// Check and store a definition (a new version when it changed), and register its cron
    /// triggers as schedules.
    pub async fn apply(&self, spec: WorkflowSpec) -> Result<Applied, WorkflowError> {
        let wf = self.check(spec).await?;
        let (version, created) = self
            .store
            .put_workflow(wf.name(), &wf.spec().to_value())
            .await?;
        self.sync_schedules(wf.name(), &wf.spec().triggers).await?;
        Ok(Applied {
            name: wf.name().to_owned(),
            version,
            created,
        })
    }

    /// Delete a workflow and its schedules; its runs stay (with their version).
    pub async fn delete(&self, name: &str) -> Result<bool, WorkflowError> {
        let deleted = self.store.delete_workflow(name).await?;
        self.sync_schedules(name, &[]).await?;
        Ok(deleted)
    }

    async fn sync_schedules(
        &self,
        name: &str,
        triggers: &[TriggerSpec],
    ) -> Result<(), WorkflowError> {
        let prefix = format!("{SCHEDULE_PREFIX}{name}:");
        let mut wanted = BTreeSet::new();
        for (i, t) in triggers.iter().enumerate() {
            let Some(cron) = &t.cron else { continue };
            let schedule_name = format!("{prefix}{i}");
            let payload = CronTask {
                workflow: name.to_owned(),
                input: t.input.clone().unwrap_or(Value::Null),
                cron: cron.clone(),
            };
            let def = ScheduleDef::new(&schedule_name, cron, WORKFLOW_CRON_TASK, &payload)
                .map_err(|e| WorkflowError::State(e.to_string()))?
                .timezone(t.timezone.clone().unwrap_or_else(|| "UTC".into()));
            crate::task::register_schedule(self.store.as_ref(), &def)
                .await
                .map_err(|e| WorkflowError::State(e.to_string()))?;
            wanted.insert(schedule_name);
        }
        let mut cursor = None;
        loop {
            let page = self.store.list_schedules(cursor.as_deref(), 200).await?;
            for s in &page.items {
                if s.def.name.starts_with(&prefix) && !wanted.contains(&s.def.name) {
                    self.store.delete_schedule(&s.def.name).await?;
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(())
    }

    /// The latest version of a workflow, or a given one.
    pub async fn get(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<WorkflowRecord>, WorkflowError> {
        Ok(self.store.get_workflow(name, version).await?)
    }

    /// Workflows by name.
    pub async fn list(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<WorkflowRecord>, WorkflowError> {
        Ok(self.store.list_workflows(cursor, limit).await?)
    }

    /// A compiled version, from the cache or the store.
    async fn workflow(&self, name: &str, version: u32) -> Result<Arc<Workflow>, WorkflowError> {
        let key = (name.to_owned(), version);
        if let Some(wf) = self
            .cache
            .lock()
            .map_err(|_| WorkflowError::NotRunning)?
            .get(&key)
        {
            return Ok(wf.clone());
        }
        let rec = self
            .store
            .get_workflow(name, Some(version))
            .await?
            .ok_or_else(|| {
                WorkflowError::NotFound(format!(
                    "workflow '{name}' version {version} does not exist"
                ))
            })?;
        let spec = WorkflowSpec::from_value(rec.definition)
            .map_err(|e| WorkflowError::Parse(e.message))?;
        let wf = Arc::new(Workflow::load(spec).map_err(WorkflowError::Invalid)?);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, wf.clone());
        }
        Ok(wf)
    }

    /// Start a run of the latest version of `name`. `trigger` says what started it
    /// (`{"kind": "manual"}`, …).
    pub async fn start(
        &self,
        name: &str,
        inputs: Value,
        trigger: Value,
    ) -> Result<RunRecord, WorkflowError> {
        self.start_run(
            uuid::Uuid::now_v7().to_string(),
            name,
            inputs,
            trigger,
            None,
        )
        .await
    }

    async fn start_run(
        &self,
        id: String,
        name: &str,
        inputs: Value,
        trigger: Value,
        parent: Option<ParentRef>,
    ) -> Result<RunRecord, WorkflowError> {
        if let Some(existing) = self.store.get_run(&id).await? {
            return Ok(existing);
        }
        let rec = self
            .store
            .get_workflow(name, None)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("there is no workflow '{name}'")))?;
        let wf = self.workflow(name, rec.version).await?;
        let inputs = wf
            .prepare_inputs(inputs)
            .map_err(|e| WorkflowError::Inputs {
                workflow: name.to_owned(),
                detail: e.0,
            })?;
        let run = NewRun {
            id: id.clone(),
            workflow: name.to_owned(),
            version: rec.version,
            inputs,
            trigger,
            parent,
            max_concurrency: wf.spec().max_concurrency,
        };
        let start = vec![start_node(&wf, &id, 0, crate::clock::now())];
        let record = self.store.create_run(&run, &start).await?;
        self.changed();
        tracing::info!(run = %record.id, workflow = name, version = rec.version, status = record.status.as_str(), "workflow run created");
        Ok(record)
    }

    /// A run with its node timeline.
    pub async fn run(&self, id: &str) -> Result<Option<RunDetail>, WorkflowError> {
        let Some(run) = self.store.get_run(id).await? else {
            return Ok(None);
        };
        let nodes = self.store.run_nodes(id).await?;
        Ok(Some(RunDetail { run, nodes }))
    }

    /// Waits until run `id` has ended (completed, failed or cancelled) and returns it.
    ///
    /// Woken by every node end this engine records, so a run this process's workers execute
    /// is seen at once; one that other processes' workers execute is looked at again every
    /// second. Put a deadline on it with `tokio::time::timeout`.
    pub async fn finished(&self, id: &str) -> Result<RunRecord, WorkflowError> {
        Ok(self.wait_for(id, |d| d.run.status.is_final()).await?.run)
    }

    /// Waits until `until` holds for run `id` (its record and node timeline) and returns what
    /// it held for: a node waiting for an event, a node failed once… Woken as
    /// [`finished`](Self::finished) is.
    pub async fn wait_for(
        &self,
        id: &str,
        mut until: impl FnMut(&RunDetail) -> bool,
    ) -> Result<RunDetail, WorkflowError> {
        /// How often a run is looked at again when nothing in this process changed.
        const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
        let mut changes = self.changed.subscribe();
        loop {
            // Marked seen before the read, so a change during it wakes the next wait.
            changes.borrow_and_update();
            let detail = self
                .run(id)
                .await?
                .ok_or_else(|| WorkflowError::NotFound(format!("there is no run '{id}'")))?;
            if until(&detail) {
                return Ok(detail);
            }
            // The sender lives as long as `self`, so `changed` only ends by the timeout.
            let _ = tokio::time::timeout(RECHECK, changes.changed()).await;
        }
    }

    /// A receiver marked changed whenever this engine records a node's end (completed,
    /// waiting, failed, or a late result ignored) or starts or cancels a run: what
    /// [`wait_for`](Self::wait_for) wakes on, for waits of your own.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes [`wait_for`](Self::wait_for).
    fn changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a node's end in the store and wakes [`wait_for`](Self::wait_for).
    async fn finish_node(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        result: &NodeResult,
        plan: &(dyn for<'r> Fn(&'r RunRecord, &'r [NodeRecord]) -> Plan + Send + Sync),
    ) -> Result<FinishOutcome, StoreError> {
        let outcome = self
            .store
            .finish_node(run, node, attempt, result, plan)
            .await;
        self.changed();
        outcome
    }

    /// Runs, newest first.
    pub async fn runs(&self, filter: &RunFilter) -> Result<Page<RunRecord>, WorkflowError> {
        Ok(self.store.list_runs(filter).await?)
    }

    /// Cancel a run (and the sub-workflow runs it waits for).
    pub async fn cancel(&self, id: &str) -> Result<RunStatus, WorkflowError> {
        let status = self
            .store
            .cancel_run(id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("there is no run '{id}'")))?;
        self.changed();
        // Children: sub-workflow nodes record their child run in their input.
        for n in self.store.run_nodes(id).await? {
            if let Some(child) = n
                .input
                .as_ref()
                .and_then(|i| i.get("child"))
                .and_then(Value::as_str)
                && let Some(c) = self.store.get_run(child).await?
                && !c.status.is_final()
            {
                Box::pin(self.cancel(child)).await?;
            }
        }
        Ok(status)
    }

    /// Retry a failed run from its failed nodes.
    pub async fn retry(&self, id: &str) -> Result<RunRecord, WorkflowError> {
        let run = self
            .store
            .get_run(id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("there is no run '{id}'")))?;
        if run.status != RunStatus::Failed {
            return Err(WorkflowError::State(format!(
                "run '{id}' is {}; only a failed run can be retried",
                run.status.as_str()
            )));
        }
        let wf = self.workflow(&run.workflow, run.version).await?;
        let now = crate::clock::now();
        let restart: Vec<StartNode> = self
            .store
            .run_nodes(id)
            .await?
            .iter()
            .filter(|n| n.status == NodeStatus::Failed)
            .filter_map(|n| {
                let mut start = start_node(&wf, id, *wf.index.get(&n.node)?, now);
                // A key of its own: the failed attempt's task (or an earlier retry's) may
                // still be finishing, as its result is recorded before the worker lets the
                // task go, and a restart under that task's key would be taken for it and
                // dropped. `retry_run` lets one retry of a failed run through.
                start.task.dedupe_key = Some(format!(
                    "wf:{id}:{}:retry:{}",
                    n.node,
                    now.timestamp_micros()
                ));
                Some(start)
            })
            .collect();
        if !self.store.retry_run(id, &restart).await? {
            return Err(WorkflowError::State(format!(
                "run '{id}' is no longer failed"
            )));
        }
        self.store
            .get_run(id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("there is no run '{id}'")))
    }

    /// Counts, success rate and duration percentiles of a workflow's runs and nodes, for
    /// runs created in `[since, until)`.
    pub async fn analytics(
        &self,
        name: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Analytics, WorkflowError> {
        let (runs, nodes) = self.store.run_timings(name, since, until).await?;
        let run_stats = stats(
            runs.iter()
                .map(|r| (r.status.as_str(), millis(r.started_at, r.finished_at))),
        );
        let mut by_node: BTreeMap<&str, Vec<(&str, Option<f64>)>> = BTreeMap::new();
        for n in &nodes {
            by_node
                .entry(n.node.as_str())
                .or_default()
                .push((n.status.as_str(), millis(n.started_at, n.finished_at)));
        }
        Ok(Analytics {
            workflow: name.to_owned(),
            since,
            until,
            runs: run_stats,
            nodes: by_node
                .into_iter()
                .map(|(k, v)| (k.to_owned(), stats(v.into_iter())))
                .collect(),
        })
    }

    /// Start a run of every workflow with an `event` trigger named `name`, with `payload` as
    /// inputs. `key` makes it idempotent (the same key starts each run once).
    pub async fn dispatch_event(
        &self,
        key: &str,
        name: &str,
        payload: &Value,
    ) -> Result<Vec<RunRecord>, WorkflowError> {
        let mut started = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.store.list_workflows(cursor.as_deref(), 200).await?;
            for rec in &page.items {
                let Ok(spec) = WorkflowSpec::from_value(rec.definition.clone()) else {
                    continue;
                };
                if !spec
                    .triggers
                    .iter()
                    .any(|t| t.event.as_deref() == Some(name))
                {
                    continue;
                }
                let trigger = json!({"kind": "event", "event": name});
                match self
                    .start_run(
                        derived_run_id(key, &rec.name),
                        &rec.name,
                        payload.clone(),
                        trigger,
                        None,
                    )
                    .await
                {
                    Ok(r) => started.push(r),
                    Err(WorkflowError::Inputs { workflow, detail }) => {
                        tracing::warn!(
                            event = name,
                            workflow,
                            detail,
                            "event payload does not fit the workflow's inputs; no run started"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(started)
    }

    /// The workflow and trigger a hook path belongs to.
    pub async fn find_hook(
        &self,
        path: &str,
    ) -> Result<Option<(String, TriggerSpec)>, WorkflowError> {
        let mut cursor = None;
        loop {
            let page = self.store.list_workflows(cursor.as_deref(), 200).await?;
            for rec in &page.items {
                let Ok(spec) = WorkflowSpec::from_value(rec.definition.clone()) else {
                    continue;
                };
                if let Some(t) = spec
                    .triggers
                    .iter()
                    .find(|t| t.hook.as_deref() == Some(path))
                {
                    return Ok(Some((rec.name.clone(), t.clone())));
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(None),
            }
        }
    }
}

fn task_error(e: WorkflowError) -> TaskError {
    match e {
        WorkflowError::Store(s) => TaskError::from(s),
        // The source may be back before the next attempt.
        WorkflowError::Secrets(m) => TaskError::retryable(format!("secret source: {m}")),
        other => TaskError::permanent(other.to_string()),
    }
}
