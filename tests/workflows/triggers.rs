//! Triggers, secrets, versions and analytics, two agents, and wait nodes.

use super::*;

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

pub(crate) async fn cron_and_event_triggers_start_runs(store: Arc<dyn Store>) {
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
    probe
        .until("triggers did not fire", |calls| {
            calls.get("triggered-ada") == Some(&1)
                && calls.get("triggered-cron").is_some_and(|c| *c >= 2)
        })
        .await;
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

pub(crate) async fn secrets_are_used_but_never_recorded(store: Arc<dyn Store>) {
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

pub(crate) async fn versions_analytics_and_bad_inputs(store: Arc<dyn Store>) {
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

pub(crate) async fn two_agents_execute_each_node_once(
    store: Arc<dyn Store>,
    second: Arc<dyn Store>,
) {
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
pub(crate) async fn publish(engine: &Workflows, key: &str, decision: &str) {
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

pub(crate) async fn wait_nodes_continue_on_their_event_or_time_out(store: Arc<dyn Store>) {
    let env = start(store, Arc::default());
    apply(&env.engine, APPROVAL).await;
    // The event comes while the run waits.
    let run = env
        .engine
        .start("approval", json!({"amount": 12.5}), json!({}))
        .await
        .unwrap();
    let waiting = env.engine.wait_for(&run.id, |d| {
        node_status(d).get("decision") == Some(&NodeStatus::Running)
    });
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the run waits")
        .unwrap();
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
