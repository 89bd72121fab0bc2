//! Workflow definitions, runs and node executions (`WorkflowStore`).

use super::*;

use flowbot_core::task::TaskRecord;
use flowbot_core::workflow::{
    BeginOutcome, Claim, FinishOutcome, NewRun, NodeRecord, NodeResult, NodeStatus, ParentRef,
    Plan, RunEnd, RunFilter, RunRecord, RunStatus, StartNode, WORKFLOW_NODE_TASK,
    WORKFLOW_RESUME_TASK, WORKFLOW_START_TASK,
};

fn run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn new_run(id: &str, workflow: &str, max: Option<u32>) -> NewRun {
    NewRun {
        id: id.to_owned(),
        workflow: workflow.to_owned(),
        version: 1,
        inputs: json!({ "who": "ada" }),
        trigger: json!({ "kind": "manual" }),
        parent: None,
        max_concurrency: max,
    }
}

fn start(run: &str, node: &str) -> StartNode {
    StartNode {
        node: node.to_owned(),
        task: NewTask::new(WORKFLOW_NODE_TASK, &json!({ "run": run, "node": node }))
            .expect("payload"),
    }
}

fn starts(run: &str, nodes: &[&str]) -> Vec<StartNode> {
    nodes.iter().map(|n| start(run, n)).collect()
}

/// Every task of `kind`, oldest first.
async fn tasks_of(store: &dyn Store, kind: &str) -> Vec<TaskRecord> {
    let mut items = store
        .list_tasks(&TaskFilter {
            kind: Some(kind.to_owned()),
            limit: 1000,
            ..TaskFilter::default()
        })
        .await
        .expect("list tasks")
        .items;
    items.reverse();
    items
}

/// The nodes whose tasks were enqueued for `run`, in enqueue order.
async fn node_tasks(store: &dyn Store, run: &str) -> Vec<String> {
    tasks_of(store, WORKFLOW_NODE_TASK)
        .await
        .into_iter()
        .filter(|t| t.payload["run"] == run)
        .map(|t| t.payload["node"].as_str().expect("node").to_owned())
        .collect()
}

async fn nodes(store: &dyn Store, run: &str) -> Vec<NodeRecord> {
    store.run_nodes(run).await.expect("run nodes")
}

async fn node(store: &dyn Store, run: &str, node: &str) -> NodeRecord {
    nodes(store, run)
        .await
        .into_iter()
        .find(|n| n.node == node)
        .unwrap_or_else(|| panic!("node {node} of run {run}"))
}

async fn run_of(store: &dyn Store, id: &str) -> RunRecord {
    store
        .get_run(id)
        .await
        .expect("get run")
        .expect("run exists")
}

async fn begin(store: &dyn Store, run: &str, node: &str, attempt: u32) -> BeginOutcome {
    store
        .begin_node(run, node, attempt)
        .await
        .expect("begin node")
}

fn completed(output: serde_json::Value) -> NodeResult {
    NodeResult::Completed {
        input: json!({ "in": 1 }),
        output,
    }
}

fn nothing(_: &RunRecord, _: &[NodeRecord]) -> Plan {
    Plan::default()
}

fn end(status: RunStatus) -> Plan {
    Plan {
        end: Some(RunEnd {
            status,
            output: (status == RunStatus::Completed).then(|| json!({ "done": true })),
            error: (status == RunStatus::Failed).then(|| "node 'x' failed".to_owned()),
        }),
        ..Plan::default()
    }
}

/// Begin `node` at attempt 1 and finish it with `result` and `plan`.
async fn run_node(
    store: &dyn Store,
    run: &str,
    node: &str,
    result: &NodeResult,
    plan: &(dyn Fn(&RunRecord, &[NodeRecord]) -> Plan + Send + Sync),
) -> FinishOutcome {
    assert!(matches!(
        begin(store, run, node, 1).await,
        BeginOutcome::Proceed { .. }
    ));
    store
        .finish_node(run, node, 1, result, plan)
        .await
        .expect("finish node")
}

pub(super) async fn workflow_versions(store: Arc<dyn Store>) {
    let v1 = json!({ "nodes": [{ "id": "a", "action": "send" }] });
    let v2 = json!({ "nodes": [{ "id": "a", "action": "notify" }] });
    assert_eq!(
        store.put_workflow("greet", &v1).await.expect("put"),
        (1, true)
    );
    assert_eq!(
        store.put_workflow("greet", &v1).await.expect("put same"),
        (1, false),
        "the same definition keeps its version"
    );
    assert_eq!(
        store.put_workflow("greet", &v2).await.expect("put"),
        (2, true)
    );
    assert_eq!(
        store.put_workflow("greet", &v1).await.expect("put"),
        (3, true),
        "going back to an older definition is a change"
    );
    let latest = store
        .get_workflow("greet", None)
        .await
        .expect("get")
        .expect("latest");
    assert_eq!((latest.name.as_str(), latest.version), ("greet", 3));
    assert_eq!(latest.definition, v1);
    let second = store
        .get_workflow("greet", Some(2))
        .await
        .expect("get")
        .expect("version 2");
    assert_eq!(second.definition, v2);
    assert!(
        store
            .get_workflow("greet", Some(9))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_workflow("nobody", None)
            .await
            .expect("get")
            .is_none()
    );

    assert!(store.delete_workflow("greet").await.expect("delete"));
    assert!(!store.delete_workflow("greet").await.expect("delete twice"));
    assert!(!store.delete_workflow("nobody").await.expect("delete"));
    assert!(
        store
            .get_workflow("greet", None)
            .await
            .expect("get")
            .is_none(),
        "a deleted workflow has no latest version"
    );
    let kept = store
        .get_workflow("greet", Some(3))
        .await
        .expect("get")
        .expect("explicit versions outlive a delete");
    assert_eq!(kept.definition, v1);
    assert!(
        store
            .list_workflows(None, 10)
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert_eq!(
        store.put_workflow("greet", &v1).await.expect("put again"),
        (4, true),
        "applying after a delete creates a new version, never reusing a number"
    );
    assert_eq!(
        store
            .get_workflow("greet", None)
            .await
            .expect("get")
            .expect("latest")
            .version,
        4
    );
    assert_eq!(
        store.put_workflow("greet", &v1).await.expect("put same"),
        (4, false)
    );

    // Listing: the latest version of every workflow not deleted, by name, page by page.
    for name in ["echo", "alpha", "delta", "bravo"] {
        store
            .put_workflow(name, &json!({ "name": name }))
            .await
            .expect("put");
    }
    store
        .put_workflow("delta", &json!({ "name": "delta", "v": 2 }))
        .await
        .expect("put");
    store
        .put_workflow("charlie", &json!({}))
        .await
        .expect("put");
    assert!(store.delete_workflow("charlie").await.expect("delete"));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_workflows(cursor.as_deref(), 2)
            .await
            .expect("list");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|w| (w.name.clone(), w.version)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            ("alpha".to_owned(), 1),
            ("bravo".to_owned(), 1),
            ("delta".to_owned(), 2),
            ("echo".to_owned(), 1),
            ("greet".to_owned(), 4),
        ]
    );
    let e = store
        .list_workflows(Some("garbage"), 2)
        .await
        .expect_err("bad cursor");
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
}

pub(super) async fn runs_and_max_concurrency(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let r1 = run_id();
    let run = store
        .create_run(&new_run(&r1, "limited", Some(1)), &starts(&r1, &["a", "b"]))
        .await
        .expect("create");
    assert_eq!(run.status, RunStatus::Running);
    assert!(run.started_at.is_some());
    assert_eq!(
        run,
        run_of(s, &r1).await,
        "the returned run is the stored one"
    );
    assert_eq!(run.inputs, json!({ "who": "ada" }));
    assert_eq!(run.trigger["kind"], "manual");
    assert_eq!(run.max_concurrency, Some(1));
    let rows = nodes(s, &r1).await;
    assert_eq!(
        rows.iter()
            .map(|n| (n.node.as_str(), n.status, n.attempt))
            .collect::<Vec<_>>(),
        vec![("a", NodeStatus::Pending, 0), ("b", NodeStatus::Pending, 0)]
    );
    assert!(rows.iter().all(|n| n.started_at.is_none()));
    assert_eq!(node_tasks(s, &r1).await, vec!["a", "b"]);

    // The slot is taken: the next run waits, with no nodes and no tasks.
    let r2 = run_id();
    let queued = store
        .create_run(&new_run(&r2, "limited", Some(1)), &starts(&r2, &["a"]))
        .await
        .expect("create");
    assert_eq!(queued.status, RunStatus::Queued);
    assert!(queued.started_at.is_none());
    assert!(nodes(s, &r2).await.is_empty());
    assert!(node_tasks(s, &r2).await.is_empty());
    // Other workflows, and runs without a limit, are not held back.
    let free = run_id();
    assert_eq!(
        store
            .create_run(&new_run(&free, "unlimited", None), &starts(&free, &["a"]))
            .await
            .expect("create")
            .status,
        RunStatus::Running
    );

    // No slot yet: promoting it changes nothing.
    let still = store
        .start_queued_run(&r2, &starts(&r2, &["a"]))
        .await
        .expect("start queued")
        .expect("known run");
    assert_eq!(still.status, RunStatus::Queued);
    assert!(nodes(s, &r2).await.is_empty());
    assert!(
        store
            .start_queued_run("no-such-run", &[])
            .await
            .expect("start unknown")
            .is_none()
    );
    assert!(tasks_of(s, WORKFLOW_START_TASK).await.is_empty());

    // The first run ends: the oldest queued run of the workflow is told to start.
    let outcome = run_node(s, &r1, "a", &completed(json!(1)), &|_, _| {
        end(RunStatus::Completed)
    })
    .await;
    assert_eq!(
        outcome,
        FinishOutcome::Recorded {
            run_status: RunStatus::Completed,
            claimed: None
        }
    );
    let ended = run_of(s, &r1).await;
    assert_eq!(ended.status, RunStatus::Completed);
    assert_eq!(ended.output, Some(json!({ "done": true })));
    assert!(ended.finished_at.is_some());
    let start_tasks = tasks_of(s, WORKFLOW_START_TASK).await;
    assert_eq!(start_tasks.len(), 1);
    assert_eq!(start_tasks[0].payload, json!({ "run": r2 }));
    assert_eq!(
        start_tasks[0].dedupe_key.as_deref(),
        Some(format!("wf-start:{r2}").as_str())
    );

    let started = store
        .start_queued_run(&r2, &starts(&r2, &["a"]))
        .await
        .expect("start queued")
        .expect("known run");
    assert_eq!(started.status, RunStatus::Running);
    let started_at = started.started_at.expect("started");
    assert!(started_at >= started.created_at);
    assert_eq!(started, run_of(s, &r2).await);
    assert_eq!(node_tasks(s, &r2).await, vec!["a"]);
    assert_eq!(nodes(s, &r2).await.len(), 1);
    // A duplicate start task finds it running and starts nothing twice.
    let again = store
        .start_queued_run(&r2, &starts(&r2, &["a"]))
        .await
        .expect("start again")
        .expect("known run");
    assert_eq!(again.status, RunStatus::Running);
    assert_eq!(again.started_at, Some(started_at));
    assert_eq!(node_tasks(s, &r2).await, vec!["a"]);
    // Now it holds the slot.
    let r3 = run_id();
    assert_eq!(
        store
            .create_run(&new_run(&r3, "limited", Some(1)), &starts(&r3, &["a"]))
            .await
            .expect("create")
            .status,
        RunStatus::Queued
    );
    // A second slot (a higher limit at creation) lets a run in beside it.
    let r4 = run_id();
    assert_eq!(
        store
            .create_run(&new_run(&r4, "limited", Some(2)), &starts(&r4, &["a"]))
            .await
            .expect("create")
            .status,
        RunStatus::Running
    );
    let e = store
        .create_run(&new_run(&r4, "limited", None), &[])
        .await
        .expect_err("duplicate run id");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
}

pub(super) async fn node_steps_are_exactly_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let r = run_id();
    store
        .create_run(&new_run(&r, "dag", None), &starts(&r, &["a", "b"]))
        .await
        .expect("create");
    assert_eq!(
        begin(s, "no-such-run", "a", 1).await,
        BeginOutcome::RunNotActive(None)
    );
    let BeginOutcome::Proceed { run, nodes: seen } = begin(s, &r, "a", 1).await else {
        panic!("a begins")
    };
    assert_eq!(run.id, r);
    assert_eq!(
        seen.iter()
            .map(|n| (n.node.as_str(), n.status, n.attempt))
            .collect::<Vec<_>>(),
        vec![("a", NodeStatus::Running, 1), ("b", NodeStatus::Pending, 0)]
    );
    let a = node(s, &r, "a").await;
    assert!(a.started_at.is_some());

    let calls = Arc::new(AtomicU32::new(0));
    let start_c = {
        let calls = calls.clone();
        let r = r.clone();
        move |run: &RunRecord, nodes: &[NodeRecord]| {
            calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(run.status, RunStatus::Running);
            assert!(
                nodes
                    .iter()
                    .any(|n| n.status == NodeStatus::Completed && n.output.is_some()),
                "the plan sees the finished node"
            );
            Plan {
                start: vec![start(&r, "c")],
                ..Plan::default()
            }
        }
    };
    // A result for another attempt than the running one is stale.
    assert_eq!(
        store
            .finish_node(&r, "a", 2, &completed(json!("a")), &start_c)
            .await
            .expect("finish"),
        FinishOutcome::Stale
    );
    // A node that never began cannot finish.
    assert_eq!(
        store
            .finish_node(&r, "b", 0, &completed(json!("b")), &start_c)
            .await
            .expect("finish"),
        FinishOutcome::Stale
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        store
            .finish_node(&r, "a", 1, &completed(json!("a")), &start_c)
            .await
            .expect("finish"),
        FinishOutcome::Recorded {
            run_status: RunStatus::Running,
            claimed: None
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let a = node(s, &r, "a").await;
    assert_eq!(a.status, NodeStatus::Completed);
    assert_eq!(a.output, Some(json!("a")));
    assert_eq!(a.input, Some(json!({ "in": 1 })));
    assert!(a.finished_at.is_some());
    assert_eq!(node(s, &r, "c").await.status, NodeStatus::Pending);
    // The same attempt delivered again: nothing happens, the plan is not asked.
    assert_eq!(
        store
            .finish_node(&r, "a", 1, &completed(json!("again")), &start_c)
            .await
            .expect("finish again"),
        FinishOutcome::Stale
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(node(s, &r, "a").await.output, Some(json!("a")));
    assert_eq!(
        begin(s, &r, "a", 2).await,
        BeginOutcome::AlreadyFinished(NodeStatus::Completed)
    );
    // b finishes too and its plan also starts c (a join): c is started once.
    assert_eq!(
        run_node(s, &r, "b", &completed(json!("b")), &start_c).await,
        FinishOutcome::Recorded {
            run_status: RunStatus::Running,
            claimed: None
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(node_tasks(s, &r).await, vec!["a", "b", "c"]);

    // Retries: a failed attempt with attempts left keeps the node running.
    assert!(matches!(
        begin(s, &r, "c", 1).await,
        BeginOutcome::Proceed { .. }
    ));
    let fail = |last| NodeResult::Failed {
        input: Some(json!({ "url": "http://x" })),
        error: "timed out".into(),
        last,
    };
    assert_eq!(
        store
            .finish_node(&r, "c", 1, &fail(false), &start_c)
            .await
            .expect("fail"),
        FinishOutcome::Recorded {
            run_status: RunStatus::Running,
            claimed: None
        }
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "no plan for a retried attempt"
    );
    let c = node(s, &r, "c").await;
    assert_eq!((c.status, c.attempt), (NodeStatus::Running, 1));
    assert_eq!(c.error.as_deref(), Some("timed out"));
    assert_eq!(c.input, Some(json!({ "url": "http://x" })));
    assert!(c.finished_at.is_none());
    let first_start = c.started_at.expect("started");
    assert!(matches!(
        begin(s, &r, "c", 2).await,
        BeginOutcome::Proceed { .. }
    ));
    let c = node(s, &r, "c").await;
    assert_eq!((c.status, c.attempt), (NodeStatus::Running, 2));
    assert_eq!(
        c.started_at,
        Some(first_start),
        "started_at is the first attempt's"
    );
    assert_eq!(
        store
            .finish_node(&r, "c", 1, &fail(true), &start_c)
            .await
            .expect("late result of attempt 1"),
        FinishOutcome::Stale
    );
    // A plan that makes no sense is refused and the step is rolled back.
    let e = store
        .finish_node(&r, "c", 2, &fail(true), &|_, _| end(RunStatus::Running))
        .await
        .expect_err("a run cannot end running");
    assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    assert_eq!(node(s, &r, "c").await.status, NodeStatus::Running);

    // The last attempt fails: the node fails, the plan skips d and ends the run.
    let outcome = store
        .finish_node(&r, "c", 2, &fail(true), &|_, nodes| {
            assert!(
                nodes
                    .iter()
                    .any(|n| n.node == "c" && n.status == NodeStatus::Failed)
            );
            Plan {
                skip: vec!["d".into(), "a".into()],
                ..end(RunStatus::Failed)
            }
        })
        .await
        .expect("last attempt fails");
    assert_eq!(
        outcome,
        FinishOutcome::Recorded {
            run_status: RunStatus::Failed,
            claimed: None
        }
    );
    let c = node(s, &r, "c").await;
    assert_eq!(c.status, NodeStatus::Failed);
    assert_eq!(c.error.as_deref(), Some("timed out"));
    assert!(c.finished_at.is_some());
    let d = node(s, &r, "d").await;
    assert_eq!(d.status, NodeStatus::Skipped);
    assert!(d.finished_at.is_some());
    assert_eq!(
        node(s, &r, "a").await.status,
        NodeStatus::Completed,
        "skipping a node with a row leaves it alone"
    );
    assert_eq!(
        nodes(s, &r)
            .await
            .iter()
            .map(|n| n.node.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b", "c", "d"],
        "nodes in the order they were queued"
    );
    let failed = run_of(s, &r).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("node 'x' failed"));
    assert!(failed.finished_at.is_some());
    assert!(failed.output.is_none());
    // A run that is not running takes no more steps.
    assert_eq!(
        begin(s, &r, "e", 1).await,
        BeginOutcome::RunNotActive(Some(RunStatus::Failed))
    );
    assert_eq!(
        store
            .finish_node(&r, "c", 2, &fail(true), &start_c)
            .await
            .expect("finish"),
        FinishOutcome::Stale
    );

    // Retry the failed run from c.
    assert!(
        store
            .retry_run(&r, &starts(&r, &["c"]))
            .await
            .expect("retry")
    );
    let retried = run_of(s, &r).await;
    assert_eq!(retried.status, RunStatus::Running);
    assert!(retried.error.is_none());
    assert!(retried.finished_at.is_none());
    let c = node(s, &r, "c").await;
    assert_eq!(c.status, NodeStatus::Pending);
    assert!(c.error.is_none());
    assert!(c.finished_at.is_none());
    assert_eq!(c.attempt, 2, "the attempt count is kept");
    assert_eq!(node_tasks(s, &r).await, vec!["a", "b", "c", "c"]);
    assert!(
        !store
            .retry_run(&r, &starts(&r, &["c"]))
            .await
            .expect("retry a running run"),
        "only a failed run is retried"
    );
    assert!(!store.retry_run("no-such-run", &[]).await.expect("retry"));

    // A node that starts a sub-workflow waits, running, with its input recorded.
    assert!(matches!(
        begin(s, &r, "c", 1).await,
        BeginOutcome::Proceed { .. }
    ));
    assert_eq!(
        store
            .finish_node(
                &r,
                "c",
                1,
                &NodeResult::Waiting {
                    input: json!({ "child": true })
                },
                &start_c
            )
            .await
            .expect("waiting"),
        FinishOutcome::Recorded {
            run_status: RunStatus::Running,
            claimed: None
        }
    );
    let c = node(s, &r, "c").await;
    assert_eq!((c.status, c.attempt), (NodeStatus::Running, 1));
    assert_eq!(c.input, Some(json!({ "child": true })));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The resume completes it and the plan ends the run.
    assert_eq!(
        store
            .finish_node(&r, "c", 1, &completed(json!("child out")), &|_, _| end(
                RunStatus::Completed
            ))
            .await
            .expect("resumed"),
        FinishOutcome::Recorded {
            run_status: RunStatus::Completed,
            claimed: None
        }
    );
    assert_eq!(run_of(s, &r).await.status, RunStatus::Completed);
}

pub(super) async fn concurrent_finishes_start_a_join_once(
    store: Arc<dyn Store>,
    other: Arc<dyn Store>,
) {
    // Two agents finish the two branches of a join at the same time: exactly one of the two
    // plans' starts of the join creates its row and task.
    for round in 0..5 {
        let r = run_id();
        store
            .create_run(&new_run(&r, "join", None), &starts(&r, &["a", "b"]))
            .await
            .expect("create");
        for n in ["a", "b"] {
            assert!(matches!(
                begin(store.as_ref(), &r, n, 1).await,
                BeginOutcome::Proceed { .. }
            ));
        }
        let mut joins = Vec::new();
        for (s, n) in [(store.clone(), "a"), (other.clone(), "b")] {
            let r = r.clone();
            joins.push(tokio::spawn(async move {
                let plan = |run: &RunRecord, _: &[NodeRecord]| Plan {
                    start: vec![start(&run.id, "join")],
                    ..Plan::default()
                };
                s.finish_node(&r, n, 1, &completed(json!(n)), &plan)
                    .await
                    .expect("finish")
            }));
        }
        for j in joins {
            assert_eq!(
                j.await.expect("join"),
                FinishOutcome::Recorded {
                    run_status: RunStatus::Running,
                    claimed: None
                },
                "round {round}"
            );
        }
        assert_eq!(
            node_tasks(store.as_ref(), &r).await,
            vec!["a", "b", "join"],
            "round {round}"
        );
    }
}

pub(super) async fn run_ends_free_slots_and_wake_parents(store: Arc<dyn Store>) {
    let s = store.as_ref();
    // A parent run whose node `sub` waits for a child run.
    let p = run_id();
    store
        .create_run(&new_run(&p, "parent", None), &starts(&p, &["sub"]))
        .await
        .expect("create parent");
    assert!(matches!(
        begin(s, &p, "sub", 1).await,
        BeginOutcome::Proceed { .. }
    ));
    let waiting = NodeResult::Waiting { input: json!({}) };
    store
        .finish_node(&p, "sub", 1, &waiting, &nothing)
        .await
        .expect("waiting");
    let parent = Some(ParentRef {
        run: p.clone(),
        node: "sub".into(),
    });

    // A child that completes wakes its parent.
    let c1 = run_id();
    let child = store
        .create_run(
            &NewRun {
                parent: parent.clone(),
                ..new_run(&c1, "child", None)
            },
            &starts(&c1, &["x"]),
        )
        .await
        .expect("create child");
    assert_eq!(child.parent, parent);
    assert_eq!(run_of(s, &c1).await.parent, parent);
    run_node(s, &c1, "x", &completed(json!(2)), &|_, _| {
        end(RunStatus::Completed)
    })
    .await;
    let resumes = tasks_of(s, WORKFLOW_RESUME_TASK).await;
    assert_eq!(resumes.len(), 1);
    assert_eq!(
        resumes[0].payload,
        json!({ "run": p, "node": "sub", "child": c1 })
    );
    assert_eq!(
        resumes[0].dedupe_key.as_deref(),
        Some(format!("wf-resume:{c1}").as_str())
    );
    assert!(
        tasks_of(s, WORKFLOW_START_TASK).await.is_empty(),
        "a run without a limit frees no slot"
    );

    // A limited child that is cancelled frees its slot and wakes its parent too.
    let c2 = run_id();
    store
        .create_run(
            &NewRun {
                parent: parent.clone(),
                ..new_run(&c2, "child", Some(1))
            },
            &starts(&c2, &["x", "y"]),
        )
        .await
        .expect("create child");
    assert!(matches!(
        begin(s, &c2, "x", 1).await,
        BeginOutcome::Proceed { .. }
    ));
    let c3 = run_id();
    assert_eq!(
        store
            .create_run(&new_run(&c3, "child", Some(1)), &starts(&c3, &["x"]))
            .await
            .expect("create")
            .status,
        RunStatus::Queued
    );
    assert_eq!(
        store.cancel_run(&c2).await.expect("cancel"),
        Some(RunStatus::Cancelled)
    );
    let cancelled = run_of(s, &c2).await;
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    for n in nodes(s, &c2).await {
        assert_eq!(n.status, NodeStatus::Cancelled, "{}", n.node);
        assert!(n.finished_at.is_some());
    }
    let resumes = tasks_of(s, WORKFLOW_RESUME_TASK).await;
    assert_eq!(resumes.len(), 2);
    assert_eq!(
        resumes[1].payload,
        json!({ "run": p, "node": "sub", "child": c2 })
    );
    let start_tasks = tasks_of(s, WORKFLOW_START_TASK).await;
    assert_eq!(start_tasks.len(), 1);
    assert_eq!(start_tasks[0].payload, json!({ "run": c3 }));
    // A step of the cancelled run finds it inactive.
    assert_eq!(
        store
            .finish_node(&c2, "x", 1, &completed(json!(0)), &nothing)
            .await
            .expect("finish"),
        FinishOutcome::Stale
    );
    assert_eq!(
        begin(s, &c2, "y", 1).await,
        BeginOutcome::RunNotActive(Some(RunStatus::Cancelled))
    );
    // Cancelling again, or a finished run, changes nothing.
    assert_eq!(
        store.cancel_run(&c2).await.expect("cancel again"),
        Some(RunStatus::Cancelled)
    );
    assert_eq!(
        store.cancel_run(&c1).await.expect("cancel completed"),
        Some(RunStatus::Completed)
    );
    assert_eq!(run_of(s, &c1).await.status, RunStatus::Completed);
    assert_eq!(store.cancel_run("no-such-run").await.expect("cancel"), None);
    assert_eq!(tasks_of(s, WORKFLOW_RESUME_TASK).await.len(), 2);
    // A queued run can be cancelled too.
    assert_eq!(
        store.cancel_run(&c3).await.expect("cancel queued"),
        Some(RunStatus::Cancelled)
    );
    assert!(
        store
            .start_queued_run(&c3, &starts(&c3, &["x"]))
            .await
            .expect("start")
            .is_some_and(|r| r.status == RunStatus::Cancelled)
    );
    assert!(nodes(s, &c3).await.is_empty());
}

pub(super) async fn run_listing_and_timings(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut alpha = Vec::new();
    let mut all = Vec::new();
    for i in 0..7 {
        let id = run_id();
        let wf = if i % 3 == 2 { "beta" } else { "alpha" };
        let run = store
            .create_run(&new_run(&id, wf, None), &starts(&id, &["a"]))
            .await
            .expect("create");
        if wf == "alpha" {
            alpha.push(run.clone());
        }
        all.push(run);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Newest first, page by page.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_runs(&RunFilter {
                cursor,
                limit: 3,
                ..RunFilter::default()
            })
            .await
            .expect("list");
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let newest_first: Vec<String> = all.iter().rev().map(|r| r.id.clone()).collect();
    assert_eq!(seen, newest_first);
    let alpha_page = store
        .list_runs(&RunFilter {
            workflow: Some("alpha".into()),
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        alpha_page
            .items
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        alpha.iter().rev().map(|r| r.id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(alpha_page.items[0], alpha[alpha.len() - 1]);
    assert!(alpha_page.next_cursor.is_none());
    store.cancel_run(&alpha[1].id).await.expect("cancel");
    store.cancel_run(&all[2].id).await.expect("cancel beta");
    let cancelled = |workflow: Option<&str>| RunFilter {
        workflow: workflow.map(str::to_owned),
        status: Some(RunStatus::Cancelled),
        limit: 100,
        ..RunFilter::default()
    };
    let page = store.list_runs(&cancelled(None)).await.expect("by status");
    assert_eq!(page.items.len(), 2);
    let page = store
        .list_runs(&cancelled(Some("alpha")))
        .await
        .expect("by both");
    assert_eq!(
        page.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![alpha[1].id.as_str()]
    );
    assert!(
        store
            .list_runs(&RunFilter {
                workflow: Some("gamma".into()),
                limit: 10,
                ..RunFilter::default()
            })
            .await
            .expect("none")
            .items
            .is_empty()
    );
    for bad in ["garbage", "7b7d", "00"] {
        let e = store
            .list_runs(&RunFilter {
                cursor: Some(bad.into()),
                limit: 10,
                ..RunFilter::default()
            })
            .await
            .expect_err(bad);
        assert!(matches!(e, StoreError::Invalid(_)), "{e}");
    }

    // Timings of runs created in [since, until), with their nodes.
    run_node(s, &alpha[0].id, "a", &completed(json!(0)), &|_, _| {
        end(RunStatus::Completed)
    })
    .await;
    let since = alpha[0].created_at;
    let far = Utc::now() + chrono::Duration::hours(1);
    let (runs, node_times) = store
        .run_timings("alpha", since, far)
        .await
        .expect("timings");
    assert_eq!(runs.len(), alpha.len());
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert!(runs[0].finished_at.is_some() && runs[0].started_at.is_some());
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Cancelled)
            .count(),
        1
    );
    assert_eq!(node_times.len(), alpha.len(), "one node per run");
    let done = node_times
        .iter()
        .filter(|n| n.status == NodeStatus::Completed)
        .collect::<Vec<_>>();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].node.as_str(), done[0].attempt), ("a", 1));
    assert!(done[0].started_at.is_some() && done[0].finished_at.is_some());
    // The window is half-open: `until` excludes the run created at that instant.
    let (runs, node_times) = store
        .run_timings("alpha", since, alpha[2].created_at)
        .await
        .expect("timings");
    assert_eq!(runs.len(), 2);
    assert_eq!(node_times.len(), 2);
    let (runs, _) = store
        .run_timings("alpha", alpha[2].created_at, far)
        .await
        .expect("timings");
    assert_eq!(runs.len(), alpha.len() - 2);
    let (runs, node_times) = store
        .run_timings("beta", far, far + chrono::Duration::hours(1))
        .await
        .expect("timings");
    assert!(runs.is_empty() && node_times.is_empty());
}

pub(super) async fn a_plan_can_claim_the_next_node(store: Arc<dyn Store>) {
    let s = store.as_ref();
    s.create_run(&new_run("claim1", "wf", None), &starts("claim1", &["a"]))
        .await
        .expect("create run");
    let claim = |_: &RunRecord, _: &[NodeRecord]| Plan {
        start: starts("claim1", &["b", "c"]),
        claim: Some(Claim {
            node: "b".into(),
            worker: "w-claim".into(),
            lease: Duration::from_secs(30),
        }),
        ..Plan::default()
    };
    let done = NodeResult::Completed {
        input: json!({}),
        output: json!({}),
    };
    let outcome = run_node(s, "claim1", "a", &done, &claim).await;
    let FinishOutcome::Recorded {
        run_status: RunStatus::Running,
        claimed: Some(task),
    } = outcome
    else {
        panic!("expected a claimed task, got {outcome:?}");
    };
    // The claimed node runs at attempt 1 and its task is leased to the worker; the other
    // started node is queued as usual.
    let b = node(s, "claim1", "b").await;
    assert_eq!((b.status, b.attempt), (NodeStatus::Running, 1));
    assert!(b.started_at.is_some());
    assert_eq!(node(s, "claim1", "c").await.status, NodeStatus::Pending);
    let t = s.get_task(task).await.expect("get").expect("task");
    assert_eq!(t.state, TaskState::Running);
    assert_eq!(t.lease_owner.as_deref(), Some("w-claim"));
    assert_eq!(t.attempts, 1);
    let queued: Vec<String> = tasks_of(s, WORKFLOW_NODE_TASK)
        .await
        .into_iter()
        .filter(|t| t.state == TaskState::Queued)
        .map(|t| t.payload["node"].as_str().unwrap_or_default().to_owned())
        .collect();
    // (`a`'s own task was never claimed here: the test drove its node directly.)
    assert_eq!(queued, ["a", "c"]);
    // The claimed node finishes at attempt 1 without a begin; the worker completes its task.
    let finished = s
        .finish_node(
            "claim1",
            "b",
            1,
            &done,
            &|_: &RunRecord, _: &[NodeRecord]| Plan::default(),
        )
        .await
        .expect("finish b");
    assert!(matches!(finished, FinishOutcome::Recorded { .. }));
    assert_eq!(s.complete("w-claim", &[task]).await.expect("complete"), 1);
}
