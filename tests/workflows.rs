//! The workflow engine end to end on real stores: every behaviour runs on SQLite and on
//! PostgreSQL (when `FLOWBOT_TEST_POSTGRES_URL` is set; required in CI), with real workers
//! claiming each node as a task.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

#[path = "../flowbot-store/tests/support/mod.rs"]
#[macro_use]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::task::{CronConfig, TaskFilter, TaskState, WorkerConfig};
use flowbot_core::workflow::{
    Format, NodeStatus, RunFilter, RunRecord, RunStatus, Secrets, WorkflowError, WorkflowSpec,
    Workflows,
};
use flowbot_core::{
    Action, ActionContext, Bot, BoxError, CancellationToken, Handlers, InProcess, Reply, Store,
    async_trait,
};
use flowbot_rules::WorkflowScripts;
use serde_json::{Value, json};

/// Counts calls per `key` input, fails while `fail_first` calls of that key have not
/// happened, sleeps `sleep_ms`, waits for a call of the key `after` and, with `gated`, for
/// the test to open the gate; tracks how many calls run at once.
#[derive(Default)]
struct Probe {
    calls: Mutex<HashMap<String, usize>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Notified at each call.
    called: tokio::sync::Notify,
    /// One permit lets one gated call go on.
    gate: tokio::sync::Notify,
}

impl Probe {
    /// Waits (woken by each call, 30 s at most) until `done` holds for the calls so far.
    async fn until(&self, what: &str, done: impl Fn(&HashMap<String, usize>) -> bool) {
        let wait = async {
            loop {
                let called = self.called.notified();
                tokio::pin!(called);
                called.as_mut().enable();
                if done(&self.calls.lock().unwrap()) {
                    return;
                }
                called.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .is_err()
        {
            panic!("{what}: {:?}", self.calls.lock().unwrap());
        }
    }
}

struct ProbeAction(Arc<Probe>);

#[async_trait]
impl Action for ProbeAction {
    fn name(&self) -> &str {
        "probe"
    }
    fn description(&self) -> &str {
        "test probe"
    }
    fn input_schema(&self) -> Value {
        json!({"type": "object", "properties": {
            "key": {"type": "string"},
            "fail_first": {"type": "integer"},
            "sleep_ms": {"type": "integer"},
            "gated": {"type": "boolean"},
            "after": {"type": "string"},
            "retry_after_secs": {"type": "integer"},
            "value": {}
        }, "required": ["key"], "additionalProperties": false})
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"call": {"type": "integer"}, "value": {}}})
    }
    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let key = input["key"].as_str().unwrap_or_default().to_owned();
        let call = {
            let mut calls = self.0.calls.lock().map_err(|_| "poisoned")?;
            let c = calls.entry(key.clone()).or_default();
            *c += 1;
            *c
        };
        self.0.called.notify_waiters();
        if let Some(other) = input["after"].as_str() {
            self.0
                .until("the call waited for", |calls| calls.contains_key(other))
                .await;
        }
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(ms) = input["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if input["gated"].as_bool() == Some(true) {
            self.0.gate.notified().await;
        }
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if call as u64 <= input["fail_first"].as_u64().unwrap_or(0) {
            let error = format!("probe {key} fails on call {call}");
            if let Some(secs) = input["retry_after_secs"].as_u64() {
                // A busy service saying when to come back.
                return Err(flowbot_core::Transient::new(error)
                    .retry_after(Duration::from_secs(secs))
                    .into());
            }
            return Err(error.into());
        }
        Ok(json!({"call": call, "value": input.get("value").cloned().unwrap_or(Value::Null)}))
    }
}

struct Env {
    engine: Arc<Workflows>,
    probe: Arc<Probe>,
    stop: CancellationToken,
    bot: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.bot.await;
    }
}

fn secrets() -> Secrets {
    Secrets::new(BTreeMap::from([(
        "API_TOKEN".to_owned(),
        "s3cr3t-token-value".to_owned(),
    )]))
}

/// A bot with workers, cron and the workflow engine on `store`.
fn start(store: Arc<dyn Store>, probe: Arc<Probe>) -> Env {
    let engine = Arc::new(
        Workflows::new(store.clone())
            .with_scripts(Arc::new(WorkflowScripts::default()))
            .with_secrets(secrets()),
    );
    let (channel, _handle) = InProcess::channel("local", 16);
    let bot = Bot::builder()
        .store(store)
        .channel(channel)
        .router(Handlers::new(()).fallback(|_cx| async { Ok(Reply::none()) }))
        .action(ProbeAction(probe.clone()))
        .workflows(engine.clone())
        .workers(WorkerConfig {
            concurrency: 8,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        })
        .cron(CronConfig {
            tick: Duration::from_millis(100),
            misfire_grace: Duration::from_secs(60),
        })
        .build()
        .expect("the bot builds");
    let stop = CancellationToken::new();
    let token = stop.clone();
    let bot = tokio::spawn(async move {
        bot.run(token).await.expect("the bot runs");
    });
    Env {
        engine,
        probe,
        stop,
        bot,
    }
}

async fn apply(engine: &Workflows, yaml: &str) -> u32 {
    let spec = WorkflowSpec::parse(yaml, Format::Yaml).expect("test workflow parses");
    engine
        .apply(spec)
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}"))
        .version
}

async fn wait_final(engine: &Workflows, id: &str) -> RunRecord {
    match tokio::time::timeout(Duration::from_secs(30), engine.finished(id)).await {
        Ok(run) => run.expect("the run exists"),
        Err(_) => panic!(
            "run {id} did not finish: {:#?}\ntasks: {:#?}",
            engine.run(id).await.unwrap().unwrap(),
            engine
                .store()
                .list_tasks(&TaskFilter {
                    limit: 50,
                    ..TaskFilter::default()
                })
                .await
                .unwrap()
                .items
        ),
    }
}

fn node_status(detail: &flowbot_core::workflow::RunDetail) -> BTreeMap<String, NodeStatus> {
    detail
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.status))
        .collect()
}

const FLAKY: &str = r#"
name: flaky
inputs:
  fails: { type: integer, required: true }
retry: { max_attempts: 3, backoff: fixed, delay: 20ms, jitter: 0 }
nodes:
  - { id: try, action: probe, with: { key: "{{ run.id }}", fail_first: "{{ inputs.fails }}" } }
"#;

#[path = "workflows/runs.rs"]
mod runs;
#[path = "workflows/triggers.rs"]
mod triggers;

use runs::*;
use triggers::*;

conformance!(
    single: [
        linear_runs_in_order_with_templates,
        conditions_branch_and_skip,
        fan_out_and_joins,
        failures_retry_then_fail_the_run_and_retry_resumes,
        a_node_waits_as_long_as_its_service_asks,
        sub_workflows_pass_outputs_and_failures,
        max_concurrency_queues_runs,
        cancel_stops_a_waiting_run,
        cron_and_event_triggers_start_runs,
        secrets_are_used_but_never_recorded,
        versions_analytics_and_bad_inputs,
        wait_nodes_continue_on_their_event_or_time_out,
    ],
    pair: [two_agents_execute_each_node_once]
);
