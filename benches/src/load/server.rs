//! The `flowbot-server` child process, its log and its metrics.

use super::*;

/// A `flowbot-server` child process; killed when dropped.
pub(crate) struct Server {
    /// Name used in the report and for its log file.
    pub(crate) label: String,
    /// The process.
    pub(crate) child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its stdout and stderr.
    pub(crate) log: PathBuf,
    /// Resident memory readings (what, KiB), in order.
    pub(crate) rss: Vec<(String, u64)>,
}

/// What is known about a server after it stopped.
pub(crate) struct ServerSummary {
    /// Name used in the report.
    pub(crate) label: String,
    /// Database it used (redacted).
    pub(crate) database: String,
    /// Resident memory readings (what, KiB), in order.
    pub(crate) rss: Vec<(String, u64)>,
    /// Peak resident memory (`VmHWM`) just before it stopped, KiB.
    pub(crate) peak_kib: u64,
    /// Open-files limit of the server process.
    pub(crate) open_files: Option<u64>,
    /// How it ended.
    pub(crate) exit: String,
    /// Metrics scraped just before stopping.
    pub(crate) metrics: Option<Metrics>,
    /// Its log, summarised.
    pub(crate) log: LogSummary,
}

impl Server {
    /// Start the server binary on a free port with `database_url` and the `bench` webhook
    /// channel (no callback URL, so replies are only stored); `extra` adds environment.
    pub(crate) fn spawn(
        s: &Settings,
        label: &str,
        database_url: &str,
        extra: &[(&str, &str)],
    ) -> Result<Server, String> {
        // Write the previous phases' files out first: their writeback (hundreds of MB after
        // an ingestion run) would otherwise land on this phase as other load on the cores.
        if let Err(e) = Command::new("sync").status() {
            eprintln!(
                "[flowbot-load] {label}: sync failed ({e}); the previous phase's writeback may overlap this one"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let workdir = s.dir.join(label);
        std::fs::create_dir_all(&workdir)
            .map_err(|e| format!("creating {}: {e}", workdir.display()))?;
        let log = s.dir.join(format!("server-{label}.log"));
        let file =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let out = file
            .try_clone()
            .map_err(|e| format!("duplicating the log file handle: {e}"))?;
        let child = Command::new(&s.server_bin)
            .current_dir(&workdir)
            .env("FLOWBOT_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWBOT_DATABASE__URL", database_url)
            .env("FLOWBOT_WEBHOOKS__BENCH__REPLAY_WINDOW_SECS", "300")
            .env("FLOWBOT_LOG__LEVEL", "warn")
            .env("FLOWBOT_LOG__FORMAT", "json")
            .env("NO_COLOR", "1")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", s.server_bin.display()))?;
        Ok(Server {
            label: label.to_owned(),
            child,
            port,
            log,
            rss: Vec::new(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until `/readyz` answers 200, failing early if the process exits.
    pub(crate) async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<Duration, String> {
        let started = Instant::now();
        let url = format!("{}/readyz", self.base());
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "server '{}' exited during start ({status}); log tail:\n{}",
                    self.label,
                    log_tail(&self.log, 20)
                ));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "server '{}' not ready within {READY_TIMEOUT:?}; log tail:\n{}",
            self.label,
            log_tail(&self.log, 20)
        ))
    }

    /// Record the resident memory now, labelled `what`; returns it in KiB.
    pub(crate) fn record_rss(&mut self, what: &str) -> u64 {
        let kib = rss_kib(self.pid());
        self.rss.push((what.to_owned(), kib));
        progress(&format!("{}: VmRSS {what}: {:.1} MB", self.label, mb(kib)));
        kib
    }

    /// Stop with SIGTERM (SIGKILL after 20 s) and summarise; `database` is for the report.
    pub(crate) async fn stop(mut self, http: &reqwest::Client, database: &str) -> ServerSummary {
        let pid = self.pid();
        let peak_kib = memory_kib(pid).map_or(0, |(_, hwm)| hwm);
        let open_files = open_files_limit(Some(pid));
        let metrics = if self.alive() {
            Metrics::scrape(http, &self.base()).await.ok()
        } else {
            None
        };
        let exit = match self.child.try_wait() {
            Ok(Some(status)) => format!("**died during the run**: {status}"),
            Ok(None) => {
                let asked = Instant::now();
                let term = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                let mut outcome = None;
                if term.is_ok_and(|s| s.success()) {
                    while asked.elapsed() < Duration::from_secs(20) {
                        if let Ok(Some(status)) = self.child.try_wait() {
                            outcome = Some(format!(
                                "stopped on SIGTERM in {:.2} s ({status})",
                                asked.elapsed().as_secs_f64()
                            ));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                match outcome {
                    Some(o) => o,
                    None => {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        "**did not stop within 20 s of SIGTERM**; killed".to_owned()
                    }
                }
            }
            Err(e) => format!("unknown ({e})"),
        };
        ServerSummary {
            label: self.label.clone(),
            database: flowbot_store::redact_url(database),
            rss: std::mem::take(&mut self.rss),
            peak_kib,
            open_files,
            exit,
            metrics,
            log: LogSummary::read(&self.log),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of a file.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A server log (JSON lines) summarised: counts by level and the distinct messages.
#[derive(Default)]
pub(crate) struct LogSummary {
    /// Lines by level (`WARN`, `ERROR`, …).
    pub(crate) by_level: BTreeMap<String, u64>,
    /// Lines that are not JSON (panics, for instance).
    pub(crate) other: u64,
    /// Distinct `level: message` (or raw line) with counts, in first-seen order.
    pub(crate) distinct: Vec<(String, u64)>,
}

impl LogSummary {
    /// Read and summarise a log file.
    pub(crate) fn read(path: &Path) -> LogSummary {
        let mut s = LogSummary::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let key = match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    let level = v["level"].as_str().unwrap_or("?").to_owned();
                    *s.by_level.entry(level.clone()).or_default() += 1;
                    let message = v["fields"]["message"].as_str().unwrap_or("");
                    let error = v["fields"]["error"]
                        .as_str()
                        .map(|e| format!(" (error: {e})"))
                        .unwrap_or_default();
                    let mut key = format!("{level}: {message}{error}");
                    key.truncate(300);
                    key
                }
                Err(_) => {
                    s.other += 1;
                    let mut key = format!("raw: {line}");
                    key.truncate(300);
                    key
                }
            };
            match s.distinct.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => s.distinct.push((key, 1)),
            }
        }
        s
    }

    /// Total lines.
    pub(crate) fn total(&self) -> u64 {
        self.by_level.values().sum::<u64>() + self.other
    }
}

/// Prometheus metrics of a server, by series (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// `GET /metrics`.
    pub(crate) async fn scrape(http: &reqwest::Client, base: &str) -> Result<Metrics, String> {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("GET /metrics body: {e}"))?;
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((series, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                m.insert(series.to_owned(), v);
            }
        }
        Ok(Metrics(m))
    }

    /// One series, 0 when absent.
    pub(crate) fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Tasks in a state.
    pub(crate) fn tasks(&self, state: &str) -> f64 {
        self.get(&format!("flowbot_tasks{{state=\"{state}\"}}"))
    }
}
