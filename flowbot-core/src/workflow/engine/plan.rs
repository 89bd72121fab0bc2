//! Deciding what runs next after a node finished, inside the store's transaction.

use super::*;

pub(super) fn until(template_src: &str, cx: &minijinja::Value) -> Result<DateTime<Utc>, String> {
    let v = template::render(&Value::String(template_src.to_owned()), cx)?;
    let s = v
        .as_str()
        .ok_or_else(|| format!("until: gave {v}, not a time"))?;
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("until: '{s}' is not an RFC 3339 time ({e})"))
}

/// The task for node `i` of run `run`, due now (or when a delay node's wait ends).
pub(super) fn start_node(wf: &Workflow, run: &str, i: usize, now: DateTime<Utc>) -> StartNode {
    let node = &wf.nodes[i];
    let mut task = NewTask {
        queue: crate::task::DEFAULT_QUEUE.into(),
        kind: WORKFLOW_NODE_TASK.into(),
        payload: json!({ "run": run, "node": node.id }).to_string(),
        run_at: None,
        priority: 0,
        retry: Some(node.retry),
        dedupe_key: Some(format!("wf:{run}:{}", node.id)),
        concurrency_key: None,
    };
    if let Kind::Delay(d) = node.kind {
        task.run_at = Some(now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    }
    StartNode {
        node: node.id.clone(),
        task,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum EdgeState {
    Taken,
    Dead,
    Waiting,
}

/// What to do after a node finished: start the nodes that became ready, skip those no taken
/// edge can reach, end the run when nothing is left.
pub(super) fn plan(wf: &Workflow, run: &RunRecord, rows: &[NodeRecord], secrets: &Secrets) -> Plan {
    let now = Utc::now();
    let mut plan = Plan::default();
    if let Some(failed) = rows.iter().find(|r| r.status == NodeStatus::Failed) {
        plan.end = Some(RunEnd {
            status: RunStatus::Failed,
            output: None,
            error: Some(format!(
                "node `{}` failed: {}",
                failed.node,
                failed.error.as_deref().unwrap_or("no error recorded")
            )),
        });
        return plan;
    }
    // Status of every node as known now, including this plan's decisions.
    let mut status: Vec<Option<NodeStatus>> = vec![None; wf.nodes.len()];
    for r in rows {
        if let Some(&i) = wf.index.get(&r.node) {
            status[i] = Some(r.status);
        }
    }
    let output_of = |i: usize| {
        rows.iter()
            .find(|r| r.node == wf.nodes[i].id)
            .and_then(|r| r.output.as_ref())
    };
    let edge_state = |e: usize, status: &[Option<NodeStatus>]| {
        let edge = &wf.edges[e];
        match status[edge.from] {
            Some(NodeStatus::Completed) => match edge.when {
                None => EdgeState::Taken,
                Some(want) => {
                    let got = output_of(edge.from)
                        .and_then(|o| o.get("result"))
                        .and_then(Value::as_bool);
                    if got == Some(want) {
                        EdgeState::Taken
                    } else {
                        EdgeState::Dead
                    }
                }
            },
            Some(NodeStatus::Skipped | NodeStatus::Cancelled | NodeStatus::Failed) => {
                EdgeState::Dead
            }
            _ => EdgeState::Waiting,
        }
    };
    let cx = context(run, rows, Some(secrets));
    loop {
        let mut changed = false;
        for i in 1..wf.nodes.len() {
            if status[i].is_some() {
                continue;
            }
            let states: Vec<EdgeState> = wf.incoming[i]
                .iter()
                .map(|&e| edge_state(e, &status))
                .collect();
            let any_taken = states.contains(&EdgeState::Taken);
            let any_waiting = states.contains(&EdgeState::Waiting);
            let decision = match wf.nodes[i].join {
                Join::First if any_taken => Some(true),
                Join::All if !any_waiting && any_taken => Some(true),
                _ if !any_waiting && !any_taken => Some(false),
                _ => None,
            };
            match decision {
                Some(true) => {
                    let mut s = start_node(wf, &run.id, i, now);
                    if let Kind::Until(u) = &wf.nodes[i].kind
                        && let Ok(at) = until(u, &cx)
                    {
                        s.task.run_at = Some(at);
                    }
                    plan.start.push(s);
                    status[i] = Some(NodeStatus::Pending);
                    changed = true;
                }
                Some(false) => {
                    plan.skip.push(wf.nodes[i].id.clone());
                    status[i] = Some(NodeStatus::Skipped);
                    changed = true;
                }
                None => {}
            }
        }
        if !changed {
            break;
        }
    }
    let busy = status
        .iter()
        .any(|s| matches!(s, None | Some(NodeStatus::Pending | NodeStatus::Running)));
    if !busy {
        let output = match &wf.spec.output {
            Some(t) => template::render(t, &cx)
                .unwrap_or_else(|e| json!({ "error": format!("output: {e}") })),
            None => rows
                .iter()
                .filter(|r| r.status == NodeStatus::Completed)
                .max_by_key(|r| r.finished_at)
                .and_then(|r| r.output.clone())
                .unwrap_or(Value::Null),
        };
        plan.end = Some(RunEnd {
            status: RunStatus::Completed,
            output: Some(output),
            error: None,
        });
    }
    plan
}
