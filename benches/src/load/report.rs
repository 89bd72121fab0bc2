//! The Markdown report.

use super::*;

/// `PASS` or `FAIL`.
pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// The first line of a command's output, if it ran.
pub(crate) fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The machine and build the numbers come from.
pub(crate) fn environment(s: &Settings) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let rev = command_line("git", &["-C", manifest, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = command_line("git", &["-C", manifest, "status", "--porcelain"]).is_some();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- Machine: {cores} cores ({cpu}), Linux {kernel}; the load generator and the server share these cores."
    );
    let _ = writeln!(
        out,
        "- Server: `{}` (commit {rev}{}), release build, embedded task workers on, demo bot, log level warn.",
        s.server_bin.display(),
        if dirty { ", working tree modified" } else { "" }
    );
    let _ = writeln!(
        out,
        "- Load generator: open-files limit {}.",
        open_files_limit(None).map_or_else(|| "unknown".to_owned(), |n| n.to_string())
    );
    out
}

/// Build the Markdown report.
pub(crate) fn report(s: &Settings, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# FlowBot server load benchmark\n");
    out.push_str(&environment(s));
    let _ = writeln!(out, "- Whole run: {:.0} s.\n", r.secs);

    // Summary.
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(out, "| Measure | Result | Target | Verdict |");
    let _ = writeln!(out, "|---|---|---|---|");
    for ing in r.ingestion.iter().flatten().filter(|i| !i.diagnostic) {
        let ratio = ing.webhook.rate() / ing.healthz.rate().max(f64::MIN_POSITIVE);
        let (target, v) = if ing.backend == "SQLite" {
            (
                format!("≥ {TARGET_INGEST_RATIO:.2} × healthz"),
                verdict(ratio >= TARGET_INGEST_RATIO),
            )
        } else {
            ("— (reported only)".to_owned(), "—")
        };
        let _ = writeln!(
            out,
            "| Durable webhook ingestion / healthz, {} | {ratio:.3} ({:.0} vs {:.0} req/s) | {target} | {v} |",
            ing.backend,
            ing.webhook.rate(),
            ing.healthz.rate()
        );
    }
    for e in r.ingestion.iter().filter_map(|i| i.as_ref().err()) {
        let _ = writeln!(out, "| Ingestion | could not run: {e} | | FAIL |");
    }
    match &r.chat {
        Ok(c) => {
            let p99 = percentile(&c.latencies, 0.99);
            let complete = c.open.1 == 0 && c.errors == 0 && c.timeouts == 0 && c.unexpected == 0;
            let v = if c.sessions != TARGET_CHAT_SESSIONS {
                "n/a (other session count)"
            } else {
                verdict(p99 < TARGET_CHAT_P99 && complete && !c.latencies.is_empty())
            };
            let _ = writeln!(
                out,
                "| Web chat round trip p99, {} sessions (SQLite) | {:.2} ms (p50 {:.2} ms){} | < {} ms at {TARGET_CHAT_SESSIONS} | {v} |",
                c.open.0,
                ms(p99),
                ms(percentile(&c.latencies, 0.50)),
                if complete {
                    ""
                } else {
                    "; **with failures, see below**"
                },
                TARGET_CHAT_P99.as_millis()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "| Web chat round trip | could not run: {e} | | FAIL |");
        }
    }
    match &r.memory {
        Ok(m) => {
            let _ = writeln!(
                out,
                "| Resident memory idle after start | {:.1} MB | < {TARGET_IDLE_RSS_MB:.0} MB | {} |",
                mb(m.idle_kib),
                verdict(mb(m.idle_kib) < TARGET_IDLE_RSS_MB)
            );
            if let Some(c) = m.cycles.first() {
                let v = if m.sessions != TARGET_IDLE_SESSIONS {
                    "n/a (other session count)"
                } else {
                    verdict(mb(c.open_kib) < TARGET_SESSIONS_RSS_MB && c.open.1 == 0)
                };
                let _ = writeln!(
                    out,
                    "| Resident memory with {} idle WebSocket sessions | {:.1} MB{} | < {TARGET_SESSIONS_RSS_MB:.0} MB at {TARGET_IDLE_SESSIONS} | {v} |",
                    c.open.0,
                    mb(c.open_kib),
                    if c.open.1 == 0 {
                        String::new()
                    } else {
                        format!("; **{} failed to open**", c.open.1)
                    }
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "| Resident memory | could not run: {e} | | FAIL |");
        }
    }
    let _ = writeln!(
        out,
        "\nMB = 10^6 bytes; resident memory is `VmRSS` from `/proc/<pid>/status`."
    );

    // Ingestion detail.
    let _ = writeln!(out, "\n## 1. HTTP ingestion\n");
    let _ = writeln!(
        out,
        "{} keep-alive connections, {} s warm-up, then {} s measured; only 2xx answers count. \
         Webhook bodies `{{\"user\":\"u<conn>\",\"conversation\":\"c<n mod 1000>\",\"text\":\"/echo hi\"}}`, \
         channel `bench` without callback URL. Server, load and other CPU (everything else: \
         the database server on PostgreSQL, unrelated work otherwise) are % of one core, machine busy is \
         % of all cores, during the measured window.\n",
        s.connections,
        s.warmup.as_secs(),
        s.duration.as_secs()
    );
    let _ = writeln!(
        out,
        "| Database | Route | 2xx req/s | p50 ms | p99 ms | max ms | non-2xx | I/O errors | timeouts | server CPU | load CPU | other CPU | machine busy |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ing in r.ingestion.iter().flatten() {
        for run in [&ing.healthz, &ing.webhook] {
            let l = &run.tally.latencies_us;
            let pct = |p: f64| f64::from(percentile(l, p)) / 1000.0;
            let non2xx = if run.tally.statuses.is_empty() {
                "0".to_owned()
            } else {
                run.tally
                    .statuses
                    .iter()
                    .map(|(st, n)| format!("{n}×{st}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {non2xx} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
                ing.backend,
                run.route.name(),
                run.rate(),
                pct(0.50),
                pct(0.99),
                pct(1.0),
                run.tally.io_errors,
                run.tally.timeouts,
                run.cpu.server,
                run.cpu.load,
                run.cpu.other,
                run.cpu.machine
            );
        }
    }
    for ing in r.ingestion.iter().flatten() {
        let _ = writeln!(out, "\n**{}**:", ing.backend);
        if ing.diagnostic {
            let _ = writeln!(
                out,
                "- diagnostic run: `FLOWBOT_SERVER__AGENT=false` (no embedded workers, so stored \
                 webhooks are not processed during or after the run); ratio to its healthz: {:.3}",
                ing.webhook.rate() / ing.healthz.rate().max(f64::MIN_POSITIVE)
            );
        }
        let _ = writeln!(
            out,
            "- one webhook before the load: `{}`",
            ing.sample.trim()
        );
        for run in [&ing.healthz, &ing.webhook] {
            if let Some(e) = &run.tally.first_error {
                let _ = writeln!(out, "- {}: first error: `{e}`", run.route.name());
            }
        }
        for run in [&ing.healthz, &ing.webhook] {
            if !ing.backend.starts_with("PostgreSQL") && run.cpu.other > DISTURBED_CPU {
                let _ = writeln!(
                    out,
                    "- **disturbed**: other processes used {:.0}% of a core during {}",
                    run.cpu.other,
                    run.route.name()
                );
            }
        }
        for (i, (rate, errors, drained)) in ing.repeats.iter().enumerate() {
            let _ = writeln!(
                out,
                "- webhook run {}: {rate:.0} req/s, {errors} errors{}",
                i + 2,
                drained
                    .map(|d| format!(", backlog drained in {d:.1} s"))
                    .unwrap_or_default()
            );
        }
        let Some(d) = &ing.drain else {
            continue;
        };
        let processed = d
            .metrics
            .as_ref()
            .map(|m| {
                format!(
                    "tasks done {:.0}, dead {:.0}, queued {:.0}, running {:.0}; pipeline errors {:.0}; \
                     messages in (bench) {:.0}, out (bench) {:.0}",
                    m.tasks("done"),
                    m.tasks("dead"),
                    m.tasks("queued"),
                    m.tasks("running"),
                    m.get("flowbot_pipeline_errors_total"),
                    m.get("flowbot_messages_in_total{channel=\"bench\"}"),
                    m.get("flowbot_messages_out_total{channel=\"bench\"}"),
                )
            })
            .unwrap_or_else(|| "no metrics".to_owned());
        let _ = writeln!(
            out,
            "- task backlog when the webhook run ended: {:.0} queued or running; {} after {:.1} s; {processed}{}",
            d.backlog,
            if d.drained {
                "drained"
            } else {
                "**not drained**"
            },
            d.secs,
            d.error
                .as_ref()
                .map(|e| format!("; metrics error: {e}"))
                .unwrap_or_default()
        );
    }
    for e in r.ingestion.iter().filter_map(|i| i.as_ref().err()) {
        let _ = writeln!(out, "\nIngestion could not run: {e}");
    }
    if s.postgres_url.is_none() {
        let _ = writeln!(
            out,
            "\nPostgreSQL: not run (set FLOWBOT_BENCH_POSTGRES_URL)."
        );
    }

    // Chat detail.
    let _ = writeln!(out, "\n## 2. Web chat round trip (SQLite)\n");
    match &r.chat {
        Ok(c) => {
            let _ = writeln!(
                out,
                "{} sessions opened ({} at a time) in {:.1} s, {} failed{}. All open at once, each sent \
                 {} `/echo` messages one per {} ms, sessions spread evenly over the interval; round trip = \
                 send → the bot's `message` frame (typing frames ignored).\n",
                c.open.0,
                s.batch,
                c.open.3,
                c.open.1,
                c.open
                    .2
                    .as_ref()
                    .map(|e| format!(" (first: `{e}`)"))
                    .unwrap_or_default(),
                s.chat_messages,
                s.chat_interval.as_millis()
            );
            let l = &c.latencies;
            let _ = writeln!(
                out,
                "| sent | answered | msg/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | timeouts | wrong answers | server CPU | load CPU | other CPU | machine busy |"
            );
            let _ = writeln!(
                out,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
                c.sent,
                l.len(),
                c.send_rate,
                ms(percentile(l, 0.50)),
                ms(percentile(l, 0.90)),
                ms(percentile(l, 0.99)),
                ms(percentile(l, 0.999)),
                ms(percentile(l, 1.0)),
                c.errors,
                c.timeouts,
                c.unexpected,
                c.cpu.server,
                c.cpu.load,
                c.cpu.other,
                c.cpu.machine
            );
            if c.cpu.other > DISTURBED_CPU {
                let _ = writeln!(
                    out,
                    "\n**Disturbed**: other processes used {:.0}% of a core during this SQLite run.",
                    c.cpu.other
                );
            }
            if let Some(e) = &c.first_error {
                let _ = writeln!(out, "\nFirst problem: `{e}`");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Could not run: {e}");
        }
    }

    // Memory detail.
    let _ = writeln!(out, "\n## 3. Resident memory (SQLite)\n");
    match &r.memory {
        Ok(m) => {
            let _ = writeln!(
                out,
                "Idle after start: {:.1} MB. Then {} idle sessions opened ({} at a time), held, closed; twice.\n",
                mb(m.idle_kib),
                m.sessions,
                s.batch
            );
            let _ = writeln!(
                out,
                "| Cycle | opened | failed | open time | RSS while opening | RSS all open | per session | RSS 5 s after close |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
            for (i, c) in m.cycles.iter().enumerate() {
                let steps = c
                    .steps
                    .iter()
                    .map(|(n, kib)| format!("{n}: {:.0} MB", mb(*kib)))
                    .collect::<Vec<_>>()
                    .join("; ");
                let per = if c.open.0 > 0 {
                    (c.open_kib.saturating_sub(m.idle_kib)) as f64 * 1024.0
                        / c.open.0 as f64
                        / 1000.0
                } else {
                    0.0
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} s | {steps} | {:.1} MB | {per:.1} kB | {:.1} MB |",
                    i + 1,
                    c.open.0,
                    c.open.1,
                    c.open.3,
                    mb(c.open_kib),
                    mb(c.closed_kib)
                );
            }
            for (i, c) in m.cycles.iter().enumerate() {
                if let Some(e) = &c.open.2 {
                    let _ = writeln!(out, "\nCycle {}: first failure to open: `{e}`", i + 1);
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Could not run: {e}");
        }
    }

    // Credentials.
    out.push('\n');
    auth_report(&mut out, &r.auth);

    // Servers.
    let _ = writeln!(out, "\n## Server processes\n");
    let _ = writeln!(
        out,
        "| Server | Database | open-files limit | RSS readings | peak RSS (VmHWM) | exit | log lines (warn/error/other) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for srv in &r.servers {
        let readings = srv
            .rss
            .iter()
            .map(|(what, kib)| format!("{what}: {:.1} MB", mb(*kib)))
            .collect::<Vec<_>>()
            .join("; ");
        let level = |l: &str| srv.log.by_level.get(l).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {readings} | {:.1} MB | {} | {}/{}/{} |",
            srv.label,
            srv.database,
            srv.open_files
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            mb(srv.peak_kib),
            srv.exit,
            level("WARN"),
            level("ERROR"),
            srv.log.total() - level("WARN") - level("ERROR")
        );
    }
    for srv in &r.servers {
        if let Some(m) = &srv.metrics {
            let _ = writeln!(
                out,
                "\n{}: final metrics: pipeline errors {:.0}, tasks dead {:.0}, done {:.0}, queued {:.0}",
                srv.label,
                m.get("flowbot_pipeline_errors_total"),
                m.tasks("dead"),
                m.tasks("done"),
                m.tasks("queued")
            );
        }
        if srv.log.distinct.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{} log (distinct lines, with counts):\n", srv.label);
        for (line, n) in srv.log.distinct.iter().take(12) {
            let _ = writeln!(out, "- {n}× `{}`", line.replace('`', "'"));
        }
        if srv.log.distinct.len() > 12 {
            let _ = writeln!(
                out,
                "- … {} more distinct lines",
                srv.log.distinct.len() - 12
            );
        }
    }
    let _ = writeln!(
        out,
        "\nServer logs and SQLite files: `{}`.",
        s.dir.display()
    );
    out
}
