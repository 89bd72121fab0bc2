//! Runs: max concurrency, how a run's end frees slots and wakes its parent, listing and timings.

use super::*;

/// A workflow's runs beyond its `max_concurrency` wait queued, and start as slots free.
pub async fn runs_and_max_concurrency(store: Arc<dyn Store>) {
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

/// A run that ends frees its slot and wakes its parent run.
pub async fn run_ends_free_slots_and_wake_parents(store: Arc<dyn Store>) {
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

/// Runs are listed newest first with filters, and their timings and their nodes' are reported.
pub async fn run_listing_and_timings(store: Arc<dyn Store>) {
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
        flowbot_core::clock::skip(Duration::from_millis(3));
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
    let far = flowbot_core::clock::now() + chrono::Duration::hours(1);
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
