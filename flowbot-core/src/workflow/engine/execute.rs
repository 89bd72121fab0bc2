//! Executing nodes: a node task runs its node, records how it ended, and keeps running the
//! next due node on a claim taken in the same transaction.

use super::*;

impl Workflows {
    /// The plan callback for `finish_node`.
    pub(super) fn planner<'a>(
        &'a self,
        wf: &'a Workflow,
        secrets: &'a Secrets,
    ) -> impl Fn(&RunRecord, &[NodeRecord]) -> Plan + Send + Sync + 'a {
        move |run, rows| plan_redacted(wf, run, rows, secrets)
    }

    pub(super) async fn execute_node(
        &self,
        t: &NodeTask,
        cx: &TaskContext,
    ) -> Result<(), TaskError> {
        let attempt = cx.attempt();
        let (run, rows) = match self
            .store
            .begin_node(&t.run, &t.node, attempt)
            .await
            .map_err(TaskError::from)?
        {
            BeginOutcome::Proceed { run, nodes } => (run, nodes),
            BeginOutcome::RunNotActive(_) | BeginOutcome::AlreadyFinished(_) => return Ok(()),
        };
        let wf = self
            .workflow(&run.workflow, run.version)
            .await
            .map_err(task_error)?;
        // Read once per task: the nodes this handler runs in a row see the same secrets.
        let secrets = self.secrets().await.map_err(task_error)?;
        let max_attempts = cx.task().retry.map(|r| r.max_attempts);
        let mut current = Current {
            node: t.node.clone(),
            attempt,
            max_attempts,
            task: cx.task().id,
            chained: false,
        };
        let mut rows = rows;
        for depth in 0..=MAX_CHAIN {
            let claim = (depth < MAX_CHAIN && !cx.shutdown().is_cancelled()).then(|| Claim {
                node: String::new(),
                worker: cx.worker_id().to_owned(),
                lease: cx.lease(),
            });
            let heartbeat = current.chained.then(|| self.heartbeat(cx, current.task));
            let stepped = self.step(&wf, &run, &rows, &current, claim, &secrets).await;
            if let Some(h) = heartbeat {
                h.abort();
            }
            let (next, seen) = match stepped {
                Ok(Stepped::Done { next, rows }) => (next, rows),
                Ok(Stepped::Retry(error, asked)) => {
                    // The node's backoff, or the wait the service asked for when longer.
                    let policy = wf.index.get(&current.node).map(|&i| wf.nodes[i].retry);
                    let delay = match (policy.map(|p| p.delay(current.attempt)), asked) {
                        (Some(backoff), Some(asked)) => Some(backoff.max(asked)),
                        (backoff, asked) => backoff.or(asked),
                    };
                    if !current.chained {
                        let error = TaskError::retryable(error);
                        return Err(match (asked, delay) {
                            (Some(_), Some(delay)) => error.retry_after(delay),
                            _ => error,
                        });
                    }
                    // A chained task fails the way the pool would fail it: back to the queue,
                    // due after that delay.
                    let retry_at = delay.map(|d| crate::task::after(crate::clock::now(), d));
                    let failure = crate::task::Failure {
                        id: current.task,
                        attempt: current.attempt,
                        error,
                        retry_at,
                    };
                    self.store
                        .fail(cx.worker_id(), &failure)
                        .await
                        .map_err(TaskError::from)?;
                    return Ok(());
                }
                Err(e) => {
                    if current.chained {
                        // Give the claimed task back; its lease would expire anyway.
                        let _ = self.store.release(cx.worker_id(), &[current.task]).await;
                    }
                    return Err(e);
                }
            };
            if current.chained {
                self.acknowledge(cx.worker_id(), current.task);
            }
            let Some((node, task)) = next else {
                return Ok(());
            };
            if cx.shutdown().is_cancelled() {
                let _ = self.store.release(cx.worker_id(), &[task]).await;
                return Ok(());
            }
            let policy = wf.index.get(&node).map(|&i| wf.nodes[i].retry);
            current = Current {
                node,
                attempt: 1,
                max_attempts: policy.map(|p| p.max_attempts),
                task,
                chained: true,
            };
            rows = seen;
        }
        Ok(())
    }

    /// Keep the lease of a task this handler claimed for itself.
    fn heartbeat(&self, cx: &TaskContext, task: TaskId) -> tokio::task::JoinHandle<()> {
        let (store, worker, lease) = (self.store.clone(), cx.worker_id().to_owned(), cx.lease());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = store.heartbeat(&worker, &[task], lease).await {
                    tracing::warn!(task = %task, error = %e, "heartbeat of a chained workflow node failed");
                }
            }
        })
    }

    /// Complete a task this handler claimed for itself, off the node's path.
    fn acknowledge(&self, worker: &str, task: TaskId) {
        let (store, worker) = (self.store.clone(), worker.to_owned());
        tokio::spawn(async move {
            if let Err(e) = store.complete(&worker, &[task]).await {
                // The lease expires and the node's task runs again, finding the node finished.
                tracing::warn!(task = %task, error = %e, "completing a chained workflow node's task failed");
            }
        });
    }

    /// Execute one node and record how it ended; the next node this worker claimed (with its
    /// task) and the run's nodes as they were when the plan was made.
    async fn step(
        &self,
        wf: &Workflow,
        run: &RunRecord,
        rows: &[NodeRecord],
        current: &Current,
        claim: Option<Claim>,
        secrets: &Secrets,
    ) -> Result<Stepped, TaskError> {
        let Some(&i) = wf.index.get(&current.node) else {
            return Err(TaskError::permanent(format!(
                "workflow '{}' version {} has no node '{}'",
                run.workflow, run.version, current.node
            )));
        };
        let node = &wf.nodes[i];
        let max_attempts = current.max_attempts.unwrap_or(node.retry.max_attempts);
        let started = std::time::Instant::now();
        let key = format!("task-{}", current.task);
        let outcome = match tokio::time::timeout(
            node.timeout,
            self.run_node(wf, i, run, rows, &key, secrets),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err((
                None,
                format!(
                    "timed out after {}",
                    humantime::format_duration(node.timeout)
                ),
            )),
        };
        let asked_wait = match &outcome {
            Ok(Step::RetryAfter { after, .. }) => Some(*after),
            _ => None,
        };
        let result = match outcome {
            Ok(Step::Done { input, output }) => NodeResult::Completed {
                input: redacted(input, secrets),
                output: redacted(output, secrets),
            },
            Ok(Step::Wait { input }) => NodeResult::Waiting {
                input: redacted(input, secrets),
            },
            Ok(Step::Fail { input, error }) => NodeResult::Failed {
                input: Some(redacted(input, secrets)),
                error: redacted(Value::String(error), secrets)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                last: true,
            },
            Ok(Step::RetryAfter { input, error, .. }) => NodeResult::Failed {
                input: Some(redacted(input, secrets)),
                error: redacted(Value::String(error), secrets)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                last: current.attempt >= max_attempts,
            },
            Err((input, error)) => NodeResult::Failed {
                input: input.map(|i| redacted(i, secrets)),
                error: redacted(Value::String(error), secrets)
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                last: current.attempt >= max_attempts,
            },
        };
        tracing::debug!(run = %run.id, node = %current.node, attempt = current.attempt, elapsed_ms = started.elapsed().as_millis() as u64, "workflow node executed");
        // The plan, and the rows it saw (the context of the node run next on this worker).
        let seen: Mutex<Vec<NodeRecord>> = Mutex::default();
        let claimed_node: Mutex<Option<String>> = Mutex::default();
        let planner = |r: &RunRecord, nodes: &[NodeRecord]| {
            let mut plan = plan_redacted(wf, r, nodes, secrets);
            // Run next here the first started node that is due now.
            if let Some(c) = &claim
                && let Some(s) = plan.start.iter().find(|s| s.task.run_at.is_none())
            {
                plan.claim = Some(Claim {
                    node: s.node.clone(),
                    ..c.clone()
                });
                if let Ok(mut seen) = seen.lock() {
                    *seen = nodes.to_vec();
                }
                if let Ok(mut n) = claimed_node.lock() {
                    *n = Some(s.node.clone());
                }
            }
            plan
        };
        let outcome = self
            .finish_node(&run.id, &current.node, current.attempt, &result, &planner)
            .await
            .map_err(TaskError::from)?;
        let seen = seen.into_inner().unwrap_or_default();
        let claimed_node = claimed_node.into_inner().unwrap_or_default();
        match (&result, outcome) {
            (
                NodeResult::Failed {
                    error, last: false, ..
                },
                FinishOutcome::Recorded { .. },
            ) => Ok(Stepped::Retry(
                format!("node '{}': {error}", current.node),
                asked_wait,
            )),
            (
                NodeResult::Failed {
                    error, last: true, ..
                },
                _,
            ) => {
                tracing::warn!(run = %run.id, node = %current.node, attempt = current.attempt, error, "workflow node failed; the run fails");
                Ok(Stepped::Done {
                    next: None,
                    rows: seen,
                })
            }
            (
                _,
                FinishOutcome::Recorded {
                    claimed: Some(task),
                    ..
                },
            ) => Ok(Stepped::Done {
                next: claimed_node.map(|n| (n, task)),
                rows: seen,
            }),
            _ => Ok(Stepped::Done {
                next: None,
                rows: seen,
            }),
        }
    }

    /// Execute one node: its rendered input and output, or its input (if rendering got that
    /// far) and error.
    async fn run_node(
        &self,
        wf: &Workflow,
        i: usize,
        run: &RunRecord,
        rows: &[NodeRecord],
        task_key: &str,
        secrets: &Secrets,
    ) -> Result<Step, (Option<Value>, String)> {
        let node = &wf.nodes[i];
        if let Some(name) = missing_secret(&node.kind, secrets) {
            return Err((
                None,
                match secrets.unreadable(&name) {
                    Some(why) => format!("`secrets.{name}`: {why}"),
                    None => format!(
                        "`secrets.{name}`: no secret named `{name}` is configured or stored (deleted since the workflow was applied?)"
                    ),
                },
            ));
        }
        let cx = context(run, rows, Some(secrets));
        match &node.kind {
            Kind::Action { name, with } => {
                let input =
                    template::render(with, &cx).map_err(|e| (None, format!("with: {e}")))?;
                let (actions, senders) = self
                    .actions()
                    .map_err(|e| (Some(input.clone()), e.to_string()))?;
                let acx = ActionContext {
                    store: Some(self.store.clone()),
                    senders: senders.clone(),
                    source: trigger_target(&run.trigger),
                };
                match actions.call(name, &acx, input.clone()).await {
                    Ok(output) => Ok(Step::Done { input, output }),
                    Err(e) if e.is_permanent() => Ok(Step::Fail {
                        input,
                        error: e.to_string(),
                    }),
                    Err(e) if e.retry_after().is_some() => Ok(Step::RetryAfter {
                        after: e.retry_after().unwrap_or_default(),
                        input,
                        error: e.to_string(),
                    }),
                    Err(e) => Err((Some(input), e.to_string())),
                }
            }
            Kind::Condition { source, script } => {
                let result = match script {
                    false => template::truth(source, &cx).map_err(|e| (None, e))?,
                    true => {
                        let v = self
                            .script(source, true, run, rows)
                            .map_err(|e| (None, e))?;
                        v.as_bool().ok_or_else(|| {
                            (
                                None,
                                format!("the condition script gave {v}, not true or false"),
                            )
                        })?
                    }
                };
                Ok(Step::Done {
                    input: Value::Null,
                    output: json!({ "result": result }),
                })
            }
            Kind::Script(s) => {
                let output = self.script(s, false, run, rows).map_err(|e| (None, e))?;
                Ok(Step::Done {
                    input: Value::Null,
                    output,
                })
            }
            Kind::Delay(d) => Ok(Step::Done {
                input: Value::Null,
                output: json!({ "waited_ms": d.as_millis() as u64 }),
            }),
            Kind::Until(u) => {
                let now = crate::clock::now();
                let at = until(u, &cx, now).map_err(|e| (None, e))?;
                if at > crate::task::after(now, std::time::Duration::from_millis(50)) {
                    // Delivered early (a retried task): come back at the time.
                    return Err((None, format!("not yet: waits until {}", at.to_rfc3339())));
                }
                Ok(Step::Done {
                    input: Value::Null,
                    output: json!({ "until": at.to_rfc3339() }),
                })
            }
            Kind::Join => {
                let mut out = Map::new();
                for &e in &wf.incoming[i] {
                    let from = &wf.nodes[wf.edges[e].from].id;
                    if let Some(r) = rows
                        .iter()
                        .find(|r| &r.node == from && r.status == NodeStatus::Completed)
                    {
                        out.insert(from.clone(), r.output.clone().unwrap_or(Value::Null));
                    }
                }
                Ok(Step::Done {
                    input: Value::Null,
                    output: Value::Object(out),
                })
            }
            Kind::Wait {
                event,
                key,
                timeout,
            } => {
                let key = match template::render(&Value::String(key.clone()), &cx) {
                    Ok(Value::String(k)) if !k.is_empty() => k,
                    Ok(other) => {
                        return Err((
                            None,
                            format!("wait.key: gave {other}, not a non-empty string"),
                        ));
                    }
                    Err(e) => return Err((None, format!("wait.key: {e}"))),
                };
                let input = json!({"event": event, "key": key});
                let slot = format!("{event}:{key}");
                let fail = |e: StoreError| (Some(input.clone()), e.to_string());
                let early = |payload: Value| Step::Done {
                    input: input.clone(),
                    output: json!({"event": event, "key": key, "payload": payload, "timed_out": false}),
                };
                if let Some(payload) = self.store.kv_get(EARLY_EVENTS, &slot).await.map_err(fail)? {
                    self.store
                        .kv_delete(EARLY_EVENTS, &slot)
                        .await
                        .map_err(fail)?;
                    return Ok(early(payload));
                }
                self.store
                    .kv_set(WAITS, &slot, &json!({"run": run.id, "node": node.id}))
                    .await
                    .map_err(fail)?;
                // An event published between the two looks waits in EARLY_EVENTS. Its
                // deliverer looks for this wait again after storing it, and whichever side
                // deletes the wait's row delivers: here, or in `deliver_event`.
                if let Some(payload) = self.store.kv_get(EARLY_EVENTS, &slot).await.map_err(fail)?
                    && self.store.kv_delete(WAITS, &slot).await.map_err(fail)?
                {
                    self.store
                        .kv_delete(EARLY_EVENTS, &slot)
                        .await
                        .map_err(fail)?;
                    return Ok(early(payload));
                }
                if let Some(t) = timeout {
                    let task = NewTask::new(
                        WORKFLOW_WAIT_TIMEOUT_TASK,
                        &WaitTimeoutTask {
                            run: run.id.clone(),
                            node: node.id.clone(),
                            event: event.clone(),
                            key: key.clone(),
                        },
                    )
                    .map_err(|e| (Some(input.clone()), e.to_string()))?
                    .delay(*t)
                    .dedupe_key(format!("wf-wait:{}:{}", run.id, node.id));
                    self.store.enqueue(&task).await.map_err(fail)?;
                }
                Ok(Step::Wait { input })
            }
            Kind::Workflow { name, with } => {
                let input =
                    template::render(with, &cx).map_err(|e| (None, format!("with: {e}")))?;
                // A redelivered task finds the child it already started.
                let row = rows.iter().find(|r| r.node == node.id);
                if let Some(child) = row
                    .and_then(|r| r.input.as_ref())
                    .and_then(|i| i.get("child"))
                    .and_then(Value::as_str)
                    && let Ok(Some(c)) = self.store.get_run(child).await
                    && !matches!(c.status, RunStatus::Failed | RunStatus::Cancelled)
                {
                    if c.status == RunStatus::Completed {
                        return Ok(Step::Done {
                            input: json!({ "with": input, "child": child }),
                            output: c.output.unwrap_or(Value::Null),
                        });
                    }
                    return Ok(Step::Wait {
                        input: json!({ "with": input, "child": child }),
                    });
                }
                // The child's id comes from this task, so a redelivery finds the same child.
                let id = derived_run_id(task_key, name);
                let trigger = json!({"kind": "workflow", "run": run.id, "node": node.id});
                let parent = ParentRef {
                    run: run.id.clone(),
                    node: node.id.clone(),
                };
                let wrapped = json!({ "with": input, "child": id });
                match Box::pin(self.start_run(id, name, input, trigger, Some(parent))).await {
                    Ok(_) => Ok(Step::Wait { input: wrapped }),
                    Err(e) => Err((Some(wrapped), e.to_string())),
                }
            }
        }
    }

    fn script(
        &self,
        source: &str,
        expression: bool,
        run: &RunRecord,
        rows: &[NodeRecord],
    ) -> Result<Value, String> {
        let engine = self
            .scripts
            .as_ref()
            .ok_or("scripts are not available: the engine has no script engine")?;
        let Value::Object(vars) = context_json(run, rows, None) else {
            return Err("internal: the script context is not an object".into());
        };
        engine.eval(source, expression, &vars)
    }
}

pub(super) enum Step {
    Done {
        input: Value,
        output: Value,
    },
    Wait {
        input: Value,
    },
    /// Failed in a way another attempt cannot fix ([`Permanent`](crate::Permanent)).
    Fail {
        input: Value,
        error: String,
    },
    /// Failed, and the service asked for the next attempt no earlier than `after` (its
    /// `Retry-After`).
    RetryAfter {
        input: Value,
        error: String,
        after: std::time::Duration,
    },
}

/// Most nodes one handler runs in a row on its own claims (then the next goes through the
/// queue, and another worker may take it).
pub(super) const MAX_CHAIN: usize = 100;

/// The node a handler is executing: the one its task named, or one it claimed after it.
pub(super) struct Current {
    node: String,
    attempt: u32,
    /// From the task's retry policy (the node's policy when absent).
    max_attempts: Option<u32>,
    task: TaskId,
    /// Claimed by this handler (heartbeated, completed and failed by it), not by the pool.
    chained: bool,
}

/// How a step ended.
pub(super) enum Stepped {
    /// Recorded; maybe with the next node and its task, claimed for this handler.
    Done {
        next: Option<(String, TaskId)>,
        rows: Vec<NodeRecord>,
    },
    /// The attempt failed and another is due (no earlier than the wait a service asked for).
    Retry(String, Option<std::time::Duration>),
}

/// The conversation a run was started from (a rule's message), for `send_message`.
pub(super) fn trigger_target(trigger: &Value) -> Option<Target> {
    let channel = trigger.get("channel")?.as_str()?;
    let conversation = trigger.get("conversation")?.as_str()?;
    Some(Target {
        channel: channel.into(),
        conversation: conversation.into(),
        thread: None,
    })
}

pub(super) fn context_json(
    run: &RunRecord,
    rows: &[NodeRecord],
    secrets: Option<&Secrets>,
) -> Value {
    let nodes: Map<String, Value> = rows
        .iter()
        .map(|r| {
            (
                r.node.clone(),
                json!({ "status": r.status.as_str(), "output": r.output.clone().unwrap_or(Value::Null) }),
            )
        })
        .collect();
    let mut cx = json!({
        "inputs": run.inputs,
        "nodes": nodes,
        "run": { "id": run.id, "workflow": run.workflow, "version": run.version, "trigger": run.trigger },
    });
    if let Some(s) = secrets {
        cx["secrets"] = json!(&*s.values);
    }
    cx
}

pub(super) fn context(
    run: &RunRecord,
    rows: &[NodeRecord],
    secrets: Option<&Secrets>,
) -> minijinja::Value {
    minijinja::Value::from_serialize(context_json(run, rows, secrets))
}

/// [`plan`], with secrets taken out of the run's output.
fn plan_redacted(wf: &Workflow, run: &RunRecord, rows: &[NodeRecord], secrets: &Secrets) -> Plan {
    let mut plan = plan(wf, run, rows, secrets);
    if let Some(end) = &mut plan.end
        && let Some(out) = end.output.take()
    {
        end.output = Some(redacted(out, secrets));
    }
    plan
}

/// A secret the node's templates name that `secrets` lacks: a stored secret deleted after
/// the workflow was applied (which would otherwise render as nothing).
fn missing_secret(kind: &Kind, secrets: &Secrets) -> Option<String> {
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|i| strings(i, out)),
            Value::Object(m) => m.values().for_each(|i| strings(i, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    let mut expression = None;
    match kind {
        Kind::Action { with, .. } | Kind::Workflow { with, .. } => strings(with, &mut texts),
        Kind::Until(u) => texts.push(u.as_str()),
        Kind::Wait { key, .. } => texts.push(key.as_str()),
        Kind::Condition {
            source,
            script: false,
        } => expression = Some(source.as_str()),
        _ => {}
    }
    let vars = texts
        .into_iter()
        .filter(|t| t.contains("secrets"))
        .filter_map(|t| template::variables(t).ok())
        .chain(
            expression
                .filter(|e| e.contains("secrets"))
                .and_then(|e| template::expression_variables(e).ok()),
        );
    vars.flatten().find_map(|v| {
        let name = v.strip_prefix("secrets.")?.split('.').next()?.to_owned();
        secrets.get(&name).is_none().then_some(name)
    })
}
