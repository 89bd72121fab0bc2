//! Runs: templates, branches, fan-out and joins, retries, sub-workflows, max concurrency,
//! cancellation.

use super::*;

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

pub(crate) async fn linear_runs_in_order_with_templates(store: Arc<dyn Store>) {
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

pub(crate) async fn conditions_branch_and_skip(store: Arc<dyn Store>) {
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

pub(crate) async fn fan_out_and_joins(store: Arc<dyn Store>) {
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

const BUSY: &str = r#"
name: busy
retry: { max_attempts: 3, backoff: fixed, delay: 20ms, jitter: 0 }
nodes:
  - { id: call, action: probe, with: { key: "{{ run.id }}", fail_first: 1, retry_after_secs: 3600 } }
"#;

/// A node whose service asks for a long wait (`Retry-After`) is due again no earlier than
/// that, not after its policy's 20 ms.
pub(crate) async fn a_node_waits_as_long_as_its_service_asks(store: Arc<dyn Store>) {
    let env = start(store.clone(), Arc::default());
    apply(&env.engine, BUSY).await;
    let started = flowbot_core::clock::now();
    env.engine
        .start("busy", json!({}), json!({}))
        .await
        .unwrap();
    let filter = TaskFilter {
        kind: Some(flowbot_core::workflow::WORKFLOW_NODE_TASK.to_owned()),
        state: Some(TaskState::Queued),
        limit: 10,
        ..TaskFilter::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let waiting = loop {
        let page = store.list_tasks(&filter).await.unwrap();
        if let Some(t) = page.items.into_iter().find(|t| t.attempts == 1) {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node's first attempt never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        waiting.run_at >= started + chrono::Duration::minutes(59),
        "due at {} (failed at about {started})",
        waiting.run_at
    );
    assert_eq!(env.probe.calls.lock().unwrap().len(), 1);
    env.stop().await;
}

pub(crate) async fn failures_retry_then_fail_the_run_and_retry_resumes(store: Arc<dyn Store>) {
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
    // The slow branch started before the other failed (`after`) and is held at its gate
    // until now; its result is the next thing the engine records.
    let mut changes = env.engine.changes();
    changes.borrow_and_update();
    env.probe.gate.notify_one();
    tokio::time::timeout(Duration::from_secs(30), changes.changed())
        .await
        .expect("the slow branch's late result was recorded")
        .expect("the engine lives");
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
  - { id: fast_fail, action: probe, with: { key: "ff-{{ run.id }}", fail_first: 9, after: "slow-{{ run.id }}" }, retry: { max_attempts: 1 } }
  - { id: slow, action: probe, with: { key: "slow-{{ run.id }}", gated: true } }
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

pub(crate) async fn sub_workflows_pass_outputs_and_failures(store: Arc<dyn Store>) {
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

pub(crate) async fn max_concurrency_queues_runs(store: Arc<dyn Store>) {
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

pub(crate) async fn cancel_stops_a_waiting_run(store: Arc<dyn Store>) {
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
