//! Ingestion as a durable job on the task queue, its state kept in the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowbot_core::TaskError;
use flowbot_core::task::{NewTask, TaskClient, TaskHandler, TaskRegistry, typed_handler};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ingest::{IngestOutcome, Progress, Source, SourceResult, Steps};
use super::{Knowledge, KnowledgeError};

/// The task kind of ingestion jobs.
pub const INGEST_TASK: &str = "kb.ingest";

/// The key-value namespace of job states (by job id).
pub const JOBS: &str = "kb.jobs";

/// An ingestion job: the payload of an [`INGEST_TASK`] task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestJob {
    /// The job's id (its state's key).
    pub id: String,
    /// The collection.
    pub collection: String,
    /// The documents: files, folders, inline texts.
    pub sources: Vec<Source>,
    /// Remove the collection's documents that are not among the sources afterwards.
    #[serde(default)]
    pub sync: bool,
}

impl IngestJob {
    /// A job with a new id.
    pub fn new(collection: impl Into<String>, sources: Vec<Source>) -> Self {
        let now = flowbot_core::clock::now();
        IngestJob {
            id: format!(
                "kb-{}-{:08x}",
                now.format("%Y%m%d%H%M%S"),
                fastrand::u32(..)
            ),
            collection: collection.into(),
            sources,
            sync: false,
        }
    }

    /// Remove documents that are not among the sources (a folder ingested again).
    pub fn sync(mut self, yes: bool) -> Self {
        self.sync = yes;
        self
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Enqueued, not started.
    Queued,
    /// Running (or interrupted, until the queue tries it again).
    Running,
    /// Finished; some documents may have failed (see `errors`).
    Done,
    /// Stopped by an error: the collection could not be used, or a service was unavailable
    /// (the queue tries again).
    Failed,
}

/// The state of an ingestion job, updated after each document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The job's id.
    pub id: String,
    /// The collection.
    pub collection: String,
    /// Where it stands.
    pub status: JobStatus,
    /// Documents in the job (known once it runs).
    pub total: usize,
    /// Documents finished.
    pub done: usize,
    /// Chunks written.
    pub chunks: usize,
    /// Documents added, replaced and unchanged.
    #[serde(default)]
    pub outcomes: BTreeMap<String, usize>,
    /// Why documents failed, by source.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// Files of unsupported types found in folders and passed over, with why.
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
    /// Documents of the last attempt that failed because a service was unavailable (the
    /// embedder, a store): the queue tries the job again.
    #[serde(default)]
    pub retry: Vec<String>,
    /// Documents removed (with `sync`).
    #[serde(default)]
    pub removed: Vec<String>,
    /// The job's own error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts started.
    #[serde(default)]
    pub attempts: u32,
    /// Enqueued.
    pub queued_at: DateTime<Utc>,
    /// The last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Finished (done or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobState {
    fn queued(job: &IngestJob) -> Self {
        JobState {
            id: job.id.clone(),
            collection: job.collection.clone(),
            status: JobStatus::Queued,
            total: 0,
            done: 0,
            chunks: 0,
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
            skipped: BTreeMap::new(),
            retry: Vec::new(),
            removed: Vec::new(),
            error: None,
            attempts: 0,
            queued_at: flowbot_core::clock::now(),
            started_at: None,
            finished_at: None,
        }
    }
}

fn outcome_name(o: IngestOutcome) -> &'static str {
    match o {
        IngestOutcome::Added => "added",
        IngestOutcome::Replaced => "replaced",
        IngestOutcome::Unchanged => "unchanged",
    }
}

/// Writes the job's state after each document.
struct JobSteps<'a> {
    kb: &'a Knowledge,
    state: JobState,
}

#[async_trait::async_trait]
impl Steps for JobSteps<'_> {
    async fn step(&mut self, progress: &Progress, result: &SourceResult) {
        self.state.total = progress.total;
        self.state.done = progress.done;
        self.state.chunks = progress.chunks;
        if let Some(o) = result.outcome {
            *self
                .state
                .outcomes
                .entry(outcome_name(o).to_owned())
                .or_default() += 1;
            self.state.errors.remove(&result.source);
        }
        if let Some(e) = &result.error
            && result.skipped
        {
            self.state.skipped.insert(result.source.clone(), e.clone());
        } else if let Some(e) = &result.error {
            self.state.errors.insert(result.source.clone(), e.clone());
            if result.transient {
                self.state.retry.push(result.source.clone());
            }
        }
        if let Err(e) = self.kb.save_job(&self.state).await {
            tracing::warn!(job = %self.state.id, error = %e, "ingestion job progress not saved");
        }
    }
}

impl Knowledge {
    async fn save_job(&self, state: &JobState) -> Result<(), KnowledgeError> {
        let value = serde_json::to_value(state).unwrap_or(Value::Null);
        self.kv
            .kv_set(JOBS, &state.id, &value)
            .await
            .map_err(KnowledgeError::store(format!("ingestion job {}", state.id)))?;
        self.job_saved.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// The state of a job once it is done or failed, waiting at most `timeout` for that;
    /// after the timeout, its state then. The wait ends as soon as this handle saves the
    /// job's last state (the job runs on this process's queue workers); a job run by another
    /// process is looked at again every second. `None` when there is no such job.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<JobState>, KnowledgeError> {
        const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);
        let deadline = tokio::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + LOOK_AGAIN);
        let mut saved = self.job_saved.subscribe();
        loop {
            // Subscribed before reading: a save after the read wakes the wait below.
            saved.mark_unchanged();
            let state = self.job(id).await?;
            let finished = state
                .as_ref()
                .is_none_or(|s| matches!(s.status, JobStatus::Done | JobStatus::Failed));
            let now = tokio::time::Instant::now();
            if finished || now >= deadline {
                return Ok(state);
            }
            let wake = deadline.min(now + LOOK_AGAIN);
            // The sender lives as long as `self`: `changed` cannot fail while we hold it.
            let _ = tokio::time::timeout_at(wake, saved.changed()).await;
        }
    }

    /// The state of a job.
    pub async fn job(&self, id: &str) -> Result<Option<JobState>, KnowledgeError> {
        let value = self
            .kv
            .kv_get(JOBS, id)
            .await
            .map_err(KnowledgeError::store(format!("ingestion job {id}")))?;
        Ok(value.and_then(|v| serde_json::from_value(v).ok()))
    }

    /// The states of every job, by id.
    pub async fn jobs(&self) -> Result<Vec<JobState>, KnowledgeError> {
        let all = self
            .kv
            .kv_list(JOBS)
            .await
            .map_err(KnowledgeError::store("ingestion jobs"))?;
        Ok(all
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect())
    }

    /// Run an ingestion job here and now, keeping its state in the store as it goes (what
    /// the [`INGEST_TASK`] handler does). The state ends `done`, with the documents that
    /// failed in `errors`, or `failed` with the job's error.
    pub async fn run_job(&self, job: &IngestJob) -> Result<JobState, KnowledgeError> {
        let mut state = match self.job(&job.id).await? {
            Some(s) => s,
            None => JobState::queued(job),
        };
        state.status = JobStatus::Running;
        state.attempts += 1;
        state.started_at = Some(flowbot_core::clock::now());
        state.finished_at = None;
        state.error = None;
        state.done = 0;
        state.chunks = 0;
        state.outcomes.clear();
        state.retry.clear();
        self.save_job(&state).await?;
        let mut steps = JobSteps { kb: self, state };
        let run = self
            .run_sources(&job.collection, &job.sources, job.sync, &mut steps)
            .await;
        let mut state = steps.state;
        state.finished_at = Some(flowbot_core::clock::now());
        match run {
            Ok(report) => {
                state.status = if state.retry.is_empty() {
                    JobStatus::Done
                } else {
                    JobStatus::Failed
                };
                state.removed = report.removed;
                self.save_job(&state).await?;
                Ok(state)
            }
            Err(e) => {
                state.status = JobStatus::Failed;
                state.error = Some(e.to_string());
                self.save_job(&state).await?;
                Err(e)
            }
        }
    }
}

/// The handler of [`INGEST_TASK`] tasks: it runs the job with [`Knowledge::run_job`].
/// When a document failed because a service was unavailable (the embedder, a store), or the
/// job as a whole failed that way, the task fails to be retried by the queue; the next
/// attempt skips the documents already ingested (their hash is unchanged). Documents that
/// can never load are recorded in the job's `errors` and do not fail the task.
pub fn ingest_handler(knowledge: Arc<Knowledge>) -> impl TaskHandler {
    typed_handler(move |job: IngestJob, _cx| {
        let kb = knowledge.clone();
        async move {
            match kb.run_job(&job).await {
                Ok(state) if state.retry.is_empty() => Ok(()),
                Ok(state) => Err(TaskError::retryable(format!(
                    "ingestion job {}: {} document(s) failed because a service was unavailable: {}",
                    state.id,
                    state.retry.len(),
                    state.retry.join(", ")
                ))),
                Err(e) if e.is_transient() => Err(TaskError::retryable(e)),
                Err(e) => Err(TaskError::permanent(e)),
            }
        }
    })
}

/// Register [`ingest_handler`] for [`INGEST_TASK`] on `registry`.
pub fn register_ingest(
    registry: &mut TaskRegistry,
    knowledge: Arc<Knowledge>,
) -> flowbot_core::Result<()> {
    registry.register(INGEST_TASK, ingest_handler(knowledge))
}

/// Record `job` as queued and put it on the queue; returns its id. Enqueueing a job whose
/// id is already waiting or running does nothing more (the id is the dedupe key).
pub async fn enqueue_ingest(
    tasks: &TaskClient,
    knowledge: &Knowledge,
    job: &IngestJob,
) -> Result<String, KnowledgeError> {
    let queue_error = |error| KnowledgeError::Queue {
        job: job.id.clone(),
        error,
    };
    let task = NewTask::new(INGEST_TASK, job)
        .map_err(queue_error)?
        .dedupe_key(format!("{INGEST_TASK}:{}", job.id));
    if knowledge.job(&job.id).await?.is_none() {
        knowledge.save_job(&JobState::queued(job)).await?;
    }
    tasks.enqueue(task).await.map_err(queue_error)?;
    Ok(job.id.clone())
}
