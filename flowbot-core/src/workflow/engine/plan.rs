//! Deciding what runs next after a node finished, inside the store's transaction.

use super::*;

/// The time an `until` node waits for: its template rendered, an RFC 3339 time at most
/// [`MAX_DELAY`](crate::task::MAX_DELAY) after `now`.
pub(super) fn until(
    template_src: &str,
    cx: &minijinja::Value,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    let v = template::render(&Value::String(template_src.to_owned()), cx)
        .map_err(|e| format!("until: {e}"))?;
    let s = v
        .as_str()
        .ok_or_else(|| format!("until: gave {v}, not a time"))?;
    let at = DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("until: '{s}' is not an RFC 3339 time ({e})"))?;
    if at > crate::task::after(now, crate::task::MAX_DELAY) {
        return Err(format!(
            "until: '{s}' is too far ahead: at most {} (about 10 years) from now",
            crate::task::days(crate::task::MAX_DELAY)
        ));
    }
    Ok(at)
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
        task.run_at = Some(crate::task::after(now, d));
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
    let now = crate::clock::now();
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
                        && let Ok(at) = until(u, &cx, now)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Format, WorkflowSpec};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn workflow(yaml: &str) -> Option<Workflow> {
        Workflow::load(WorkflowSpec::parse(yaml, Format::Yaml).ok()?).ok()
    }

    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        let min = DateTime::<Utc>::MIN_UTC.timestamp();
        let max = DateTime::<Utc>::MAX_UTC.timestamp();
        prop_oneof![
            (min..=max).prop_map(|s| Utc.timestamp_opt(s, 0).single().unwrap_or_default()),
            Just(DateTime::<Utc>::MIN_UTC),
            Just(DateTime::<Utc>::MAX_UTC),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// A delay node that compiled starts at a time, whenever "now" is; one that did not
        /// compile was refused on its field.
        #[test]
        fn delay_nodes_start_at_a_time(
            n in prop_oneof![any::<u64>(), 0u64..10_000],
            unit in prop::sample::select(vec!["ms", "s", "h", "d", "y"]),
            now in any_time(),
        ) {
            let yaml = format!("name: far\nnodes:\n  - id: later\n    delay: {n}{unit}\n");
            if let Some(wf) = workflow(&yaml) {
                let s = start_node(&wf, "run", 0, now);
                let at = s.task.run_at.expect("a delay node starts later");
                prop_assert!(at >= now);
            }
        }

        /// An `until` renders to a time within the limit or to an error naming the field.
        #[test]
        fn until_is_a_time_or_an_error(
            year in -300_000i64..=300_000,
            text in "[ -~]{0,40}",
            pick in 0u8..3,
            now in any_time(),
        ) {
            let src = match pick {
                0 => format!("{year:+07}-01-01T00:00:00Z"),
                1 => format!("{:04}-06-01T12:00:00Z", year.rem_euclid(10_000)),
                _ => text,
            };
            let cx = minijinja::Value::from_serialize(json!({"inputs": {}}));
            match until(&src, &cx, now) {
                Ok(at) => prop_assert!(at <= crate::task::after(now, crate::task::MAX_DELAY)),
                Err(e) => prop_assert!(e.starts_with("until"), "{e}"),
            }
        }
    }
}
