//! Workflow definitions, runs and node executions (`WorkflowStore`).

use super::*;

mod nodes;
mod runs;

pub use nodes::*;
pub use runs::*;

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

/// Workflow definitions get a new version only when they change, and deleted ones keep their versions for their runs.
pub async fn workflow_versions(store: Arc<dyn Store>) {
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
