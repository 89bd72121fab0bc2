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

use flowbot_core::task::{CronConfig, TaskFilter, WorkerConfig};
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
/// happened, and sleeps `sleep_ms`; tracks how many calls run at once.
#[derive(Default)]
struct Probe {
    calls: Mutex<HashMap<String, usize>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
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
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_running.fetch_max(now, Ordering::SeqCst);
        if let Some(ms) = input["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if call as u64 <= input["fail_first"].as_u64().unwrap_or(0) {
            return Err(format!("probe {key} fails on call {call}").into());
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = engine
            .run(id)
            .await
            .expect("get run")
            .expect("run exists")
            .run;
        if run.status.is_final() {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} did not finish: {run:#?}\nnodes: {:#?}",
            engine.run(id).await.unwrap().unwrap().nodes
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_status(detail: &flowbot_core::workflow::RunDetail) -> BTreeMap<String, NodeStatus> {
    detail
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.status))
        .collect()
}

const LINEAR: &str = r#"
name: linear
inputs:
  who: { type: string, required: true }
nodes:
  - id: first
    action: probe
    with: { key: "first-{{ run.id }}", value: "hello {{ inputs.who }}" }
  - id: store
    action: kv_set
    with: { key: "greeting/{{ inputs.who }}", value: "{{ nodes.first.output.value }}" }
  - id: read
    action: kv_get
    with: { key: "greeting/{{ inputs.who }}" }
  - id: shout
    script: 'nodes.read.output.value.to_upper() + "!"'
edges:
  - { from: first, to: store }
  - { from: store, to: read }
  - { from: read, to: shout }
output: { said: "{{ nodes.shout.output }}", calls: "{{ nodes.first.output.call }}" }
"#;

async fn linear_runs_in_order_with_templates(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, LINEAR).await;
    let run = env
        .engine
        .start("linear", json!({"who": "ada"}), json!({"kind": "manual"}))
        .await
        .unwrap();
    let done = wait_final(&env.engine, &run.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    assert_eq!(done.output, Some(json!({"said": "HELLO ADA!", "calls": 1})));
    let detail = env.engine.run(&run.id).await.unwrap().unwrap();
    let order: Vec<&str> = detail.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(order, ["first", "store", "read", "shout"]);
    for n in &detail.nodes {
        assert_eq!(n.status, NodeStatus::Completed, "{n:#?}");
        assert_eq!(n.attempt, 1);
        assert!(
            n.started_at.is_some() && n.finished_at >= n.started_at,
            "{n:#?}"
        );
    }
    assert_eq!(
        detail.nodes[1].input,
        Some(json!({"key": "greeting/ada", "value": "hello ada"}))
    );
    env.stop().await;
}

const BRANCHES: &str = r#"
name: branches
inputs:
  n: { type: integer, required: true }
nodes:
  - { id: start, action: log, with: { message: "n is {{ inputs.n }}" } }
  - { id: big, condition: { expr: "inputs.n > 10" } }
  - { id: yes, action: probe, with: { key: "yes-{{ run.id }}", value: big } }
  - { id: no, action: probe, with: { key: "no-{{ run.id }}", value: small } }
  - { id: after_no, action: log, with: { message: after } }
  - { id: merge, join: all }
  - { id: odd, condition: { script: "inputs.n % 2 == 1" } }
  - { id: odd_yes, action: log, with: { message: odd } }
edges:
  - { from: start, to: big }
  - { from: big, to: yes, when: true }
  - { from: big, to: no, when: false }
  - { from: no, to: after_no }
  - { from: yes, to: merge }
  - { from: after_no, to: merge }
  - { from: merge, to: odd }
  - { from: odd, to: odd_yes, when: true }
output: "{{ nodes.merge.output }}"
"#;

async fn conditions_branch_and_skip(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, BRANCHES).await;
    let big = env
        .engine
        .start("branches", json!({"n": 11}), json!({}))
        .await
        .unwrap();
    let small = env
        .engine
        .start("branches", json!({"n": 4}), json!({}))
        .await
        .unwrap();
    let big_run = wait_final(&env.engine, &big.id).await;
    assert_eq!(big_run.status, RunStatus::Completed);
    assert_eq!(
        big_run.output,
        Some(json!({"yes": {"call": 1, "value": "big"}}))
    );
    let s = node_status(&env.engine.run(&big.id).await.unwrap().unwrap());
    assert_eq!(s["yes"], NodeStatus::Completed);
    assert_eq!(s["no"], NodeStatus::Skipped);
    assert_eq!(
        s["after_no"],
        NodeStatus::Skipped,
        "a skip reaches the nodes after it"
    );
    assert_eq!(s["odd_yes"], NodeStatus::Completed);

    let small_run = wait_final(&env.engine, &small.id).await;
    assert_eq!(small_run.status, RunStatus::Completed);
    let s = node_status(&env.engine.run(&small.id).await.unwrap().unwrap());
    assert_eq!(s["yes"], NodeStatus::Skipped);
    assert_eq!(s["after_no"], NodeStatus::Completed);
    assert_eq!(s["merge"], NodeStatus::Completed);
    assert_eq!(s["odd_yes"], NodeStatus::Skipped);
    env.stop().await;
}

const FAN: &str = r#"
name: fan
nodes:
  - { id: split, join: all }
  - { id: a, action: probe, with: { key: "a-{{ run.id }}", sleep_ms: 10, value: 1 } }
  - { id: b, action: probe, with: { key: "b-{{ run.id }}", sleep_ms: 250, value: 2 } }
  - { id: c, action: probe, with: { key: "c-{{ run.id }}", sleep_ms: 300, value: 3 } }
  - { id: all, join: all }
  - { id: first, join: first }
edges:
  - { from: split, to: a }
  - { from: split, to: b }
  - { from: split, to: c }
  - { from: a, to: all }
  - { from: b, to: all }
  - { from: c, to: all }
  - { from: a, to: first }
  - { from: c, to: first }
output: { all: "{{ nodes.all.output | length }}", first_done: "{{ nodes.first.status }}" }
"#;

async fn fan_out_and_joins(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, FAN).await;
    let run = env.engine.start("fan", json!({}), json!({})).await.unwrap();
    let done = wait_final(&env.engine, &run.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    assert_eq!(
        done.output,
        Some(json!({"all": 3, "first_done": "completed"}))
    );
    let detail = env.engine.run(&run.id).await.unwrap().unwrap();
    let at = |id: &str| detail.nodes.iter().find(|n| n.node == id).unwrap().clone();
    // `first` ran as soon as `a` finished, before the slow `c`.
    assert!(at("first").finished_at < at("c").finished_at, "{detail:#?}");
    assert!(at("all").started_at >= at("c").finished_at, "{detail:#?}");
    // b and c take 250 and 300 ms, so they overlap unless one waited that long to start.
    assert!(
        env.probe.max_running.load(Ordering::SeqCst) >= 2,
        "branches ran in parallel"
    );
    env.stop().await;
}

const FLAKY: &str = r#"
name: flaky
inputs:
  fails: { type: integer, required: true }
retry: { max_attempts: 3, backoff: fixed, delay: 20ms, jitter: 0 }
nodes:
  - { id: try, action: probe, with: { key: "{{ run.id }}", fail_first: "{{ inputs.fails }}" } }
"#;

async fn failures_retry_then_fail_the_run_and_retry_resumes(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, FLAKY).await;
    // Fails twice, succeeds on the third attempt.
    let ok = env
        .engine
        .start("flaky", json!({"fails": 2}), json!({}))
        .await
        .unwrap();
    let done = wait_final(&env.engine, &ok.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    let node = &env.engine.run(&ok.id).await.unwrap().unwrap().nodes[0];
    assert_eq!(node.attempt, 3);
    // Fails three times: the run fails with the node's error.
    let bad = env
        .engine
        .start("flaky", json!({"fails": 3}), json!({}))
        .await
        .unwrap();
    let failed = wait_final(&env.engine, &bad.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.clone().unwrap();
    assert!(
        error.contains("node `try` failed") && error.contains("fails on call 3"),
        "{error}"
    );
    let node = &env.engine.run(&bad.id).await.unwrap().unwrap().nodes[0];
    assert_eq!((node.status, node.attempt), (NodeStatus::Failed, 3));
    // Retrying the failed run starts the failed node again; the 4th call succeeds.
    let again = env.engine.retry(&bad.id).await.unwrap();
    // Read back after the node was queued again: a fast worker may have finished it already.
    assert!(
        matches!(again.status, RunStatus::Running | RunStatus::Completed),
        "{again:#?}"
    );
    let done = wait_final(&env.engine, &bad.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    // Only failed runs can be retried.
    assert!(matches!(
        env.engine.retry(&bad.id).await,
        Err(WorkflowError::State(_))
    ));
    apply(&env.engine, CHAINED_RETRY).await;
    let chained = env
        .engine
        .start("chained", json!({}), json!({}))
        .await
        .unwrap();
    let done = wait_final(&env.engine, &chained.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    let second = env.engine.run(&chained.id).await.unwrap().unwrap().nodes[1].clone();
    assert_eq!(
        (second.node.as_str(), second.attempt),
        ("second", 2),
        "{second:#?}"
    );
    // A failure ends the run at once: a branch still running is cancelled, and its late
    // result changes nothing.
    apply(&env.engine, RACE).await;
    let race = env
        .engine
        .start("race", json!({}), json!({}))
        .await
        .unwrap();
    let failed = wait_final(&env.engine, &race.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = node_status(&env.engine.run(&race.id).await.unwrap().unwrap());
    assert_eq!(s["fast_fail"], NodeStatus::Failed);
    assert_eq!(s["slow"], NodeStatus::Cancelled, "{s:?}");
    assert!(!s.contains_key("after"), "{s:?}");
    env.stop().await;
}

/// The second node runs on the first's worker without a round through the queue; when it
/// fails, its task goes back to the queue like any other and the retry finishes the run.
const CHAINED_RETRY: &str = r#"
name: chained
retry: { max_attempts: 2, backoff: fixed, delay: 20ms, jitter: 0 }
nodes:
  - { id: first, action: log, with: { message: first } }
  - { id: second, action: probe, with: { key: "chained-{{ run.id }}", fail_first: 1 } }
edges: [ { from: first, to: second } ]
"#;

const RACE: &str = r#"
name: race
nodes:
  - { id: go, join: all }
  - { id: fast_fail, action: probe, with: { key: "ff-{{ run.id }}", fail_first: 9 }, retry: { max_attempts: 1 } }
  - { id: slow, action: probe, with: { key: "slow-{{ run.id }}", sleep_ms: 200 } }
  - { id: after, action: log, with: { message: never } }
edges: [ { from: go, to: fast_fail }, { from: go, to: slow }, { from: slow, to: after } ]
"#;

const CHILD: &str = r#"
name: child
inputs:
  x: { type: integer, required: true }
nodes:
  - { id: double, script: "inputs.x * 2" }
  - { id: check, condition: { expr: "nodes.double.output < 100" } }
  - { id: boom, action: probe, with: { key: "boom-{{ run.id }}", fail_first: 9 }, retry: { max_attempts: 1 } }
edges:
  - { from: double, to: check }
  - { from: check, to: boom, when: false }
output: "{{ nodes.double.output }}"
"#;

const PARENT: &str = r#"
name: parent
inputs:
  x: { type: integer, required: true }
nodes:
  - { id: sub, workflow: child, with: { x: "{{ inputs.x }}" } }
  - { id: use, action: log, with: { message: "child said {{ nodes.sub.output }}" } }
edges: [ { from: sub, to: use } ]
output: "{{ nodes.sub.output }}"
"#;

async fn sub_workflows_pass_outputs_and_failures(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, CHILD).await;
    apply(&env.engine, PARENT).await;
    let run = env
        .engine
        .start("parent", json!({"x": 21}), json!({}))
        .await
        .unwrap();
    let done = wait_final(&env.engine, &run.id).await;
    assert_eq!(
        (done.status, done.output.clone()),
        (RunStatus::Completed, Some(json!(42))),
        "{done:#?}"
    );
    let children = env
        .engine
        .runs(&RunFilter {
            workflow: Some("child".into()),
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(children.len(), 1);
    assert_eq!(
        children[0].parent.as_ref().map(|p| p.run.as_str()),
        Some(run.id.as_str())
    );

    let bad = env
        .engine
        .start("parent", json!({"x": 60}), json!({}))
        .await
        .unwrap();
    let failed = wait_final(&env.engine, &bad.id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("node `sub` failed") && error.contains("node `boom` failed"),
        "{error}"
    );

    // A workflow cannot run itself, directly or through another.
    let own = WorkflowSpec::parse(
        "name: child\nnodes: [ { id: again, workflow: parent } ]\n",
        Format::Yaml,
    )
    .unwrap();
    match env.engine.apply(own).await {
        Err(WorkflowError::Invalid(p)) => {
            assert!(
                p[0].to_string().contains("cycle: child -> parent -> child"),
                "{p:?}"
            )
        }
        other => panic!("expected a cycle error, got {other:?}"),
    }
    env.stop().await;
}

const LIMITED: &str = r#"
name: limited
max_concurrency: 1
nodes:
  - { id: work, action: probe, with: { key: "limited-{{ run.id }}", sleep_ms: 100 } }
"#;

async fn max_concurrency_queues_runs(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, LIMITED).await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(
            env.engine
                .start("limited", json!({}), json!({}))
                .await
                .unwrap(),
        );
    }
    assert_eq!(runs[0].status, RunStatus::Running);
    assert_eq!(runs[1].status, RunStatus::Queued);
    assert_eq!(runs[2].status, RunStatus::Queued);
    for r in &runs {
        assert_eq!(
            wait_final(&env.engine, &r.id).await.status,
            RunStatus::Completed
        );
    }
    assert_eq!(
        env.probe.max_running.load(Ordering::SeqCst),
        1,
        "never two runs at once"
    );
    env.stop().await;
}

const SLOW: &str = r#"
name: slow
nodes:
  - { id: wait, delay: 1h }
  - { id: never, action: probe, with: { key: never } }
edges: [ { from: wait, to: never } ]
"#;

async fn cancel_stops_a_waiting_run(store: Arc<dyn Store>) {
    let env = start(store.clone(), Arc::default());
    apply(&env.engine, SLOW).await;
    let run = env
        .engine
        .start("slow", json!({}), json!({}))
        .await
        .unwrap();
    // The delay is a task due in an hour, not something held in memory.
    let tasks = store
        .list_tasks(&TaskFilter {
            kind: Some(flowbot_core::workflow::WORKFLOW_NODE_TASK.into()),
            limit: 10,
            ..TaskFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(tasks.len(), 1);
    assert!(tasks[0].run_at > chrono::Utc::now() + chrono::Duration::minutes(59));
    assert_eq!(
        env.engine.cancel(&run.id).await.unwrap(),
        RunStatus::Cancelled
    );
    let detail = env.engine.run(&run.id).await.unwrap().unwrap();
    assert_eq!(detail.run.status, RunStatus::Cancelled);
    assert_eq!(detail.nodes[0].status, NodeStatus::Cancelled);
    // Cancelling again answers the status; an unknown run is not found.
    assert_eq!(
        env.engine.cancel(&run.id).await.unwrap(),
        RunStatus::Cancelled
    );
    assert!(matches!(
        env.engine.cancel("nope").await,
        Err(WorkflowError::NotFound(_))
    ));
    env.stop().await;
}

const TRIGGERED: &str = r#"
name: triggered
inputs:
  who: { type: string, default: nobody }
nodes:
  - { id: note, action: probe, with: { key: "triggered-{{ inputs.who }}" } }
triggers:
  - cron: "* * * * * *"
    input: { who: cron }
  - event: user.joined
"#;

async fn cron_and_event_triggers_start_runs(store: Arc<dyn Store>) {
    let probe: Arc<Probe> = Arc::default();
    let env = start(store.clone(), probe.clone());
    apply(&env.engine, TRIGGERED).await;
    // An event published by a workflow (or a rule) starts a run with its payload.
    apply(
        &env.engine,
        "name: publisher\nnodes:\n  - { id: pub, action: publish_event, with: { name: user.joined, payload: { who: ada } } }\n",
    )
    .await;
    env.engine
        .start("publisher", json!({}), json!({}))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let calls = probe.calls.lock().unwrap().clone();
        if calls.get("triggered-ada") == Some(&1)
            && calls.get("triggered-cron").is_some_and(|c| *c >= 2)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "triggers did not fire: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = env
        .engine
        .runs(&RunFilter {
            workflow: Some("triggered".into()),
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert!(runs.iter().any(|r| r.trigger["kind"] == "event"));
    assert!(runs.iter().any(|r| r.trigger["kind"] == "cron"));
    // Deleting the workflow removes its schedule.
    assert!(env.engine.delete("triggered").await.unwrap());
    let schedules = store.list_schedules(None, 100).await.unwrap().items;
    assert!(
        schedules
            .iter()
            .all(|s| !s.def.name.starts_with("workflow:triggered:")),
        "{schedules:?}"
    );
    env.stop().await;
}

const SECRET: &str = r#"
name: secret
nodes:
  - { id: save, action: kv_set, with: { key: token, value: "Bearer {{ secrets.API_TOKEN }}" } }
  - { id: load, action: kv_get, with: { key: token } }
edges: [ { from: save, to: load } ]
"#;

async fn secrets_are_used_but_never_recorded(store: Arc<dyn Store>) {
    let env = start(store.clone(), Arc::default());
    apply(&env.engine, SECRET).await;
    let run = env
        .engine
        .start("secret", json!({}), json!({}))
        .await
        .unwrap();
    assert_eq!(
        wait_final(&env.engine, &run.id).await.status,
        RunStatus::Completed
    );
    // The action got the real value…
    assert_eq!(
        store.kv_get("default", "token").await.unwrap(),
        Some(json!("Bearer s3cr3t-token-value"))
    );
    // …and the records show its name only.
    let detail = env.engine.run(&run.id).await.unwrap().unwrap();
    let text = serde_json::to_string(&detail).unwrap();
    assert!(!text.contains("s3cr3t-token-value"), "{text}");
    assert!(text.contains("Bearer [secret:API_TOKEN]"), "{text}");
    env.stop().await;
}

async fn versions_analytics_and_bad_inputs(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    assert_eq!(apply(&env.engine, FLAKY).await, 1);
    assert_eq!(
        apply(&env.engine, FLAKY).await,
        1,
        "same definition, same version"
    );
    let ok = env
        .engine
        .start("flaky", json!({"fails": 0}), json!({}))
        .await
        .unwrap();
    let changed = FLAKY.replace("max_attempts: 3", "max_attempts: 1");
    assert_eq!(apply(&env.engine, &changed).await, 2);
    let bad = env
        .engine
        .start("flaky", json!({"fails": 1}), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (ok.version, bad.version),
        (1, 2),
        "a run keeps the version it started with"
    );
    wait_final(&env.engine, &ok.id).await;
    assert_eq!(
        wait_final(&env.engine, &bad.id).await.status,
        RunStatus::Failed
    );

    let now = chrono::Utc::now();
    let a = env
        .engine
        .analytics(
            "flaky",
            now - chrono::Duration::minutes(5),
            now + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(a.runs.counts.get("completed"), Some(&1));
    assert_eq!(a.runs.counts.get("failed"), Some(&1));
    assert_eq!(a.runs.success_rate, Some(0.5));
    assert!(a.runs.p50_ms.is_some() && a.runs.p95_ms >= a.runs.p50_ms);
    assert_eq!(a.nodes["try"].counts.values().sum::<u64>(), 2);

    match env
        .engine
        .start("flaky", json!({"fails": "many"}), json!({}))
        .await
    {
        Err(WorkflowError::Inputs { detail, .. }) => {
            assert!(detail.contains("inputs.fails"), "{detail}")
        }
        other => panic!("expected an inputs error, got {other:?}"),
    }
    assert!(matches!(
        env.engine.start("missing", json!({}), json!({})).await,
        Err(WorkflowError::NotFound(_))
    ));
    env.stop().await;
}

/// Two agents share the store; 60 runs of a fan-out workflow: every node executes exactly
/// once and every run completes.
const SPREAD: &str = r#"
name: spread
nodes:
  - { id: a, action: probe, with: { key: "{{ run.id }}/a" } }
  - { id: b, action: probe, with: { key: "{{ run.id }}/b" } }
  - { id: c, action: probe, with: { key: "{{ run.id }}/c" } }
  - { id: d, action: probe, with: { key: "{{ run.id }}/d" } }
  - { id: e, join: all }
edges: [ { from: a, to: b }, { from: a, to: c }, { from: a, to: d }, { from: b, to: e }, { from: c, to: e }, { from: d, to: e } ]
"#;

async fn two_agents_execute_each_node_once(store: Arc<dyn Store>, second: Arc<dyn Store>) {
    let probe: Arc<Probe> = Arc::default();
    let one = start(store, probe.clone());
    let two = start(second, probe.clone());
    apply(&one.engine, SPREAD).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let engine = if i % 2 == 0 { &one.engine } else { &two.engine };
        ids.push(
            engine
                .start("spread", json!({}), json!({}))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        assert_eq!(
            wait_final(&one.engine, id).await.status,
            RunStatus::Completed
        );
    }
    let calls = probe.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 60 * 4);
    assert!(
        calls.values().all(|c| *c == 1),
        "a node ran twice: {calls:?}"
    );
    one.stop().await;
    two.stop().await;
}

const APPROVAL: &str = r#"
name: approval
inputs:
  amount: { type: number, required: true }
nodes:
  - { id: ask, action: probe, with: { key: "ask-{{ run.id }}" } }
  - { id: settle, delay: 300ms }
  - { id: decision, wait: { event: expense.decided, key: "{{ run.id }}", timeout: 2s } }
  - { id: approved, condition: { expr: "nodes.decision.output.payload.decision == 'approve'" } }
  - { id: pay, action: probe, with: { key: "pay-{{ run.id }}", value: "{{ inputs.amount }}" } }
edges:
  - { from: ask, to: settle }
  - { from: settle, to: decision }
  - { from: decision, to: approved }
  - { from: approved, to: pay, when: true }
output: "{{ nodes.decision.output }}"
"#;

/// Publish a keyed event the way a rule or workflow does: through `publish_event`.
async fn publish(engine: &Workflows, key: &str, decision: &str) {
    let def = "name: decide\ninputs:\n  key: { type: string, required: true }\n  decision: { type: string, required: true }\nnodes:\n  - { id: p, action: publish_event, with: { name: expense.decided, key: \"{{ inputs.key }}\", payload: { decision: \"{{ inputs.decision }}\" } } }\n";
    apply(engine, def).await;
    let run = engine
        .start(
            "decide",
            json!({"key": key, "decision": decision}),
            json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        wait_final(engine, &run.id).await.status,
        RunStatus::Completed
    );
}

async fn wait_nodes_continue_on_their_event_or_time_out(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, APPROVAL).await;
    // The event comes while the run waits.
    let run = env
        .engine
        .start("approval", json!({"amount": 12.5}), json!({}))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node_status(&env.engine.run(&run.id).await.unwrap().unwrap()).get("decision")
        != Some(&NodeStatus::Running)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&env.engine, &run.id, "approve").await;
    let done = wait_final(&env.engine, &run.id).await;
    assert_eq!(done.status, RunStatus::Completed, "{done:#?}");
    assert_eq!(
        done.output.as_ref().unwrap()["payload"],
        json!({"decision": "approve"})
    );
    assert_eq!(
        env.probe
            .calls
            .lock()
            .unwrap()
            .get(&format!("pay-{}", run.id)),
        Some(&1)
    );

    // The event comes before the run reaches its wait node: it is kept for it.
    let early = env
        .engine
        .start("approval", json!({"amount": 3}), json!({}))
        .await
        .unwrap();
    publish(&env.engine, &early.id, "reject").await;
    let done = wait_final(&env.engine, &early.id).await;
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(
        done.output.as_ref().unwrap()["payload"]["decision"],
        "reject"
    );
    let s = node_status(&env.engine.run(&early.id).await.unwrap().unwrap());
    assert_eq!(s["pay"], NodeStatus::Skipped);

    // No event: the wait times out and says so.
    let late = env
        .engine
        .start("approval", json!({"amount": 1}), json!({}))
        .await
        .unwrap();
    let done = wait_final(&env.engine, &late.id).await;
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.output.as_ref().unwrap()["timed_out"], true);
    env.stop().await;
}

conformance!(
    single: [
        linear_runs_in_order_with_templates,
        conditions_branch_and_skip,
        fan_out_and_joins,
        failures_retry_then_fail_the_run_and_retry_resumes,
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
