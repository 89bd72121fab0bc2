//! The engine's own task kinds: nodes, queued runs starting, sub-workflows resuming their
//! parent, cron fires, events, and wait nodes timing out.

use super::*;

impl Workflows {
    /// Hand a keyed event to the wait node waiting for it; an event with no waiter yet is kept
    /// until its wait node runs. Returns true when a waiting node got it.
    ///
    /// A wait node registers itself and then looks for a kept event; this side keeps the event
    /// and then looks for the wait again, so at least one side sees the other. Whichever
    /// deletes the wait's row delivers the event, so it is delivered once.
    pub async fn deliver_event(
        &self,
        name: &str,
        key: &str,
        payload: &Value,
    ) -> Result<bool, WorkflowError> {
        let slot = format!("{name}:{key}");
        if self.take_wait(&slot, name, key, payload).await? {
            return Ok(true);
        }
        self.store.kv_set(EARLY_EVENTS, &slot, payload).await?;
        if self.take_wait(&slot, name, key, payload).await? {
            self.store.kv_delete(EARLY_EVENTS, &slot).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Deliver `payload` to the wait registered under `slot`, if there is one and this call is
    /// the one that deletes it. A wait whose node could not be finished is put back, so the
    /// event's retry finds it.
    async fn take_wait(
        &self,
        slot: &str,
        name: &str,
        key: &str,
        payload: &Value,
    ) -> Result<bool, WorkflowError> {
        let Some(waiter) = self.store.kv_get(WAITS, slot).await? else {
            return Ok(false);
        };
        if !self.store.kv_delete(WAITS, slot).await? {
            return Ok(false);
        }
        let (Some(run), Some(node)) = (waiter["run"].as_str(), waiter["node"].as_str()) else {
            return Ok(false);
        };
        let output = json!({"event": name, "key": key, "payload": payload, "timed_out": false});
        if let Err(e) = self.finish_wait(run, node, output).await {
            self.store.kv_set(WAITS, slot, &waiter).await?;
            return Err(e);
        }
        Ok(true)
    }

    /// Complete a wait node that is still running with `output`.
    async fn finish_wait(
        &self,
        run_id: &str,
        node: &str,
        output: Value,
    ) -> Result<(), WorkflowError> {
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(());
        };
        let nodes = self.store.run_nodes(run_id).await?;
        let Some(row) = nodes.iter().find(|n| n.node == node) else {
            return Ok(());
        };
        if row.status != NodeStatus::Running {
            return Ok(());
        }
        let input = row.input.clone().unwrap_or(Value::Null);
        let wf = self.workflow(&run.workflow, run.version).await?;
        let secrets = self.secrets().await?;
        let planner = self.planner(&wf, &secrets);
        let result = NodeResult::Completed {
            input,
            output: redacted(output, &secrets),
        };
        self.finish_node(run_id, node, row.attempt, &result, &planner)
            .await?;
        Ok(())
    }

    /// Register the engine's task handlers.
    pub(crate) fn register_tasks(self: &Arc<Self>, tasks: &mut TaskRegistry) -> crate::Result<()> {
        self.on(
            tasks,
            WORKFLOW_NODE_TASK,
            |me, t: NodeTask, cx| async move { me.execute_node(&t, &cx).await },
        )?;
        self.on(tasks, WORKFLOW_START_TASK, |me, t: RunTask, _| async move {
            me.start_queued(&t.run).await.map_err(task_error)
        })?;
        self.on(
            tasks,
            WORKFLOW_RESUME_TASK,
            |me, t: ResumeTask, _| async move { me.resume(&t).await.map_err(task_error) },
        )?;
        self.on(
            tasks,
            WORKFLOW_CRON_TASK,
            |me, t: CronTask, cx| async move { me.on_cron(t, &cx).await.map_err(task_error) },
        )?;
        self.on(
            tasks,
            WORKFLOW_EVENT_TASK,
            |me, t: EventTask, cx| async move { me.on_event(&t, &cx).await.map_err(task_error) },
        )?;
        self.on(tasks, WORKFLOW_WAIT_TIMEOUT_TASK, |me, t: WaitTimeoutTask, _| async move {
            me.on_wait_timeout(&t).await.map_err(task_error)
        })
    }

    /// Register `handle` for task `kind`. Workflow tasks carry their own retry policy and
    /// time out by themselves.
    fn on<T, F, Fut>(
        self: &Arc<Self>,
        tasks: &mut TaskRegistry,
        kind: &str,
        handle: F,
    ) -> crate::Result<()>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Arc<Self>, T, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let options = KindOptions {
            retry: RetryPolicy::default(),
            timeout: None,
        };
        let me = self.clone();
        tasks.register_with(
            kind,
            options,
            typed_handler(move |t: T, cx| handle(me.clone(), t, cx)),
        )
    }

    /// A cron trigger fired: one run per fire (its id comes from the fire's task).
    async fn on_cron(&self, t: CronTask, cx: &TaskContext) -> Result<(), WorkflowError> {
        let id = derived_run_id(&cx.idempotency_key(), &t.workflow);
        let trigger = json!({"kind": "cron", "cron": t.cron});
        match self
            .start_run(id, &t.workflow, t.input, trigger, None)
            .await
        {
            Err(WorkflowError::NotFound(m)) => {
                tracing::warn!(
                    workflow = t.workflow,
                    "cron trigger for a missing workflow: {m}"
                );
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// An event was published: wake the wait node it is keyed to, start the subscribers.
    async fn on_event(&self, t: &EventTask, cx: &TaskContext) -> Result<(), WorkflowError> {
        if let Some(key) = &t.key {
            self.deliver_event(&t.name, key, &t.payload).await?;
        }
        self.dispatch_event(&cx.idempotency_key(), &t.name, &t.payload)
            .await
            .map(|_| ())
    }

    /// A wait node's time is up: it continues with `timed_out: true`.
    async fn on_wait_timeout(&self, t: &WaitTimeoutTask) -> Result<(), WorkflowError> {
        let output = json!({"event": t.event, "key": t.key, "payload": null, "timed_out": true});
        self.finish_wait(&t.run, &t.node, output).await?;
        self.store
            .kv_delete(WAITS, &format!("{}:{}", t.event, t.key))
            .await?;
        Ok(())
    }

    async fn start_queued(&self, id: &str) -> Result<(), WorkflowError> {
        let Some(run) = self.store.get_run(id).await? else {
            return Ok(());
        };
        if run.status != RunStatus::Queued {
            return Ok(());
        }
        let wf = self.workflow(&run.workflow, run.version).await?;
        let start = vec![start_node(&wf, id, 0, crate::clock::now())];
        self.store.start_queued_run(id, &start).await?;
        Ok(())
    }

    async fn resume(&self, t: &ResumeTask) -> Result<(), WorkflowError> {
        let Some(child) = self.store.get_run(&t.child).await? else {
            return Ok(());
        };
        let Some(parent) = self.store.get_run(&t.run).await? else {
            return Ok(());
        };
        let nodes = self.store.run_nodes(&t.run).await?;
        let Some(row) = nodes.iter().find(|n| n.node == t.node) else {
            return Ok(());
        };
        // Only the child the node waits for (a retried node may have started another).
        if row.status != NodeStatus::Running
            || row
                .input
                .as_ref()
                .and_then(|i| i.get("child"))
                .and_then(Value::as_str)
                != Some(t.child.as_str())
        {
            return Ok(());
        }
        let input = row.input.clone().unwrap_or(Value::Null);
        let result = match child.status {
            RunStatus::Completed => NodeResult::Completed {
                input,
                output: child.output.unwrap_or(Value::Null),
            },
            RunStatus::Failed | RunStatus::Cancelled => NodeResult::Failed {
                input: Some(input),
                error: format!(
                    "sub-workflow run {} ({}) {}: {}",
                    child.id,
                    child.workflow,
                    child.status.as_str(),
                    child.error.unwrap_or_else(|| "cancelled".into())
                ),
                last: true,
            },
            _ => return Ok(()),
        };
        let wf = self.workflow(&parent.workflow, parent.version).await?;
        let secrets = self.secrets().await?;
        let planner = self.planner(&wf, &secrets);
        self.finish_node(&t.run, &t.node, row.attempt, &result, &planner)
            .await?;
        Ok(())
    }
}
