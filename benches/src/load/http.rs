//! HTTP load: keep-alive connections driving healthz and webhook routes.

use super::*;

/// The two routes of the ingestion runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /healthz`: the HTTP floor of this server build.
    Healthz,
    /// `POST /hooks/webhook/bench`: durable ingestion.
    Webhook,
    /// `GET /api/v1/rules`, with this `Authorization` header value if any.
    ApiRead(Option<&'static str>),
}

impl Route {
    /// How the report names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Webhook => "POST /hooks/webhook/bench",
            Route::ApiRead(None) => "GET /api/v1/rules",
            Route::ApiRead(Some(_)) => "GET /api/v1/rules (credential)",
        }
    }

    /// The complete request bytes; `n` numbers requests, `worker` the connection.
    pub(crate) fn request(self, port: u16, n: u64, worker: usize) -> Vec<u8> {
        match self {
            Route::Healthz => {
                format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n").into_bytes()
            }
            Route::ApiRead(auth) => {
                let auth = auth.map_or_else(String::new, |a| format!("authorization: {a}\r\n"));
                format!("GET /api/v1/rules HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}\r\n")
                    .into_bytes()
            }
            Route::Webhook => {
                let body = format!(
                    r#"{{"user":"u{worker}","conversation":"c{}","text":"/echo hi"}}"#,
                    n % 1000
                );
                format!(
                    "POST /hooks/webhook/bench HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\
                     content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection with a minimal response reader: the status line,
/// `Content-Length` and `Connection: close` (anything else, such as chunked bodies, is an
/// error, after which the connection is replaced).
pub(crate) struct HttpConn {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// Bytes read and not yet consumed.
    pub(crate) buf: Vec<u8>,
}

/// An I/O error with a message.
pub(crate) fn io_err(what: impl Into<String>) -> std::io::Error {
    std::io::Error::other(what.into())
}

impl HttpConn {
    /// Connect to 127.0.0.1:`port`.
    pub(crate) async fn connect(port: u16) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Read more bytes into the buffer; EOF is an error.
    pub(crate) async fn fill(&mut self) -> std::io::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }

    /// Send a request and read its response: the status and whether the server closes.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io_err("response head over 64 KiB"));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io_err("response head is not UTF-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io_err("malformed status line"))?;
        let mut length = None;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(io_err(format!(
                    "unsupported transfer-encoding '{value}' (status {status})"
                )));
            }
        }
        let length = match (length, status) {
            (Some(n), _) => n,
            (None, 204 | 304) => 0,
            (None, _) => return Err(io_err(format!("no content-length (status {status})"))),
        };
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        self.buf.drain(..head_end + length);
        Ok((status, close))
    }
}

/// What the connections of one HTTP run saw inside the measurement window.
#[derive(Debug, Default)]
pub(crate) struct HttpTally {
    /// 2xx answers.
    pub(crate) ok: u64,
    /// Other answers, by status.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Connection, read or parse errors.
    pub(crate) io_errors: u64,
    /// Requests without an answer within [`REQUEST_TIMEOUT`].
    pub(crate) timeouts: u64,
    /// The first error seen (also outside the window), for the report.
    pub(crate) first_error: Option<String>,
    /// Latencies of the 2xx answers, microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// Requests answered during warm-up.
    pub(crate) warmup: u64,
}

impl HttpTally {
    /// Add another connection's tally.
    pub(crate) fn merge(&mut self, other: HttpTally) {
        self.ok += other.ok;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
        self.warmup += other.warmup;
    }
}

/// One connection's loop: requests back to back until `to`; only exchanges that start at or
/// after `from` and end by `to` are counted.
pub(crate) async fn http_worker(
    port: u16,
    route: Route,
    worker: usize,
    counter: Arc<AtomicU64>,
    from: Instant,
    to: Instant,
) -> HttpTally {
    let mut t = HttpTally::default();
    let mut conn: Option<HttpConn> = None;
    while Instant::now() < to {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(REQUEST_TIMEOUT, HttpConn::connect(port)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => {
                    if Instant::now() >= from {
                        t.io_errors += 1;
                    }
                    t.first_error.get_or_insert_with(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    if Instant::now() >= from {
                        t.timeouts += 1;
                    }
                    t.first_error.get_or_insert_with(|| {
                        format!("connect: no answer within {REQUEST_TIMEOUT:?}")
                    });
                    continue;
                }
            },
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let request = route.request(port, n, worker);
        let sent = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(&request)).await;
        let done = Instant::now();
        let counted = sent >= from && done <= to;
        match result {
            Ok(Ok((status, close))) => {
                if (200..300).contains(&status) {
                    if counted {
                        t.ok += 1;
                        let us = done.duration_since(sent).as_micros();
                        t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else if sent < from {
                        t.warmup += 1;
                    }
                } else {
                    if counted {
                        *t.statuses.entry(status).or_default() += 1;
                    }
                    t.first_error
                        .get_or_insert_with(|| format!("HTTP {status} answer"));
                }
                if close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                if counted {
                    t.io_errors += 1;
                }
                t.first_error
                    .get_or_insert_with(|| format!("exchange: {e}"));
                conn = None;
            }
            Err(_) => {
                if counted {
                    t.timeouts += 1;
                }
                t.first_error
                    .get_or_insert_with(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
                conn = None;
            }
        }
    }
    t
}

/// One HTTP run's result.
pub(crate) struct HttpRun {
    /// The route.
    pub(crate) route: Route,
    /// What the connections saw (latencies sorted).
    pub(crate) tally: HttpTally,
    /// Length of the measurement window, seconds.
    pub(crate) secs: f64,
    /// CPU use during the window.
    pub(crate) cpu: CpuUse,
}

impl HttpRun {
    /// 2xx answers per second.
    pub(crate) fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.secs
    }

    /// Non-2xx answers, I/O errors and timeouts in the window.
    pub(crate) fn errors(&self) -> u64 {
        self.tally.statuses.values().sum::<u64>() + self.tally.io_errors + self.tally.timeouts
    }
}

/// `s.connections` connections hammer `route` for warm-up plus measurement.
pub(crate) async fn http_load(s: &Settings, server: &Server, route: Route) -> HttpRun {
    progress(&format!(
        "{}: {} with {} connections, {:?} warm-up + {:?}",
        server.label,
        route.name(),
        s.connections,
        s.warmup,
        s.duration
    ));
    let from = Instant::now() + s.warmup;
    let to = from + s.duration;
    let counter = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..s.connections)
        .map(|w| {
            tokio::spawn(http_worker(
                server.port,
                route,
                w,
                counter.clone(),
                from,
                to,
            ))
        })
        .collect();
    tokio::time::sleep_until(from.into()).await;
    let cpu0 = CpuSample::now(server.pid());
    tokio::time::sleep_until(to.into()).await;
    let cpu = CpuSample::now(server.pid()).since(&cpu0);
    let mut tally = HttpTally::default();
    for h in handles {
        match h.await {
            Ok(t) => tally.merge(t),
            Err(e) => {
                tally
                    .first_error
                    .get_or_insert_with(|| format!("load task failed: {e}"));
            }
        }
    }
    tally.latencies_us.sort_unstable();
    let run = HttpRun {
        route,
        tally,
        secs: s.duration.as_secs_f64(),
        cpu,
    };
    progress(&format!(
        "{}: {}: {:.0} req/s, {} errors",
        server.label,
        route.name(),
        run.rate(),
        run.errors()
    ));
    run
}

/// The nearest-rank percentile `p` (0..=1) of sorted values.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How the backlog of webhook tasks drained after an ingestion run.
pub(crate) struct Drain {
    /// Seconds until no task was queued or running (or the limit).
    pub(crate) secs: f64,
    /// Whether it drained within [`DRAIN_TIMEOUT`].
    pub(crate) drained: bool,
    /// Tasks queued or running when the ingestion run ended.
    pub(crate) backlog: f64,
    /// Metrics when done.
    pub(crate) metrics: Option<Metrics>,
    /// Metrics scrape error, if any.
    pub(crate) error: Option<String>,
}

/// Poll `/metrics` until no task is queued or running.
pub(crate) async fn drain_backlog(http: &reqwest::Client, server: &mut Server) -> Drain {
    let started = Instant::now();
    let mut backlog = None;
    let mut last = None;
    let mut error = None;
    while started.elapsed() < DRAIN_TIMEOUT && server.alive() {
        match Metrics::scrape(http, &server.base()).await {
            Ok(m) => {
                let pending = m.tasks("queued") + m.tasks("running");
                backlog.get_or_insert(pending);
                last = Some(m);
                if pending == 0.0 {
                    return Drain {
                        secs: started.elapsed().as_secs_f64(),
                        drained: true,
                        backlog: backlog.unwrap_or(0.0),
                        metrics: last,
                        error,
                    };
                }
            }
            Err(e) => error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Drain {
        secs: started.elapsed().as_secs_f64(),
        drained: false,
        backlog: backlog.unwrap_or(f64::NAN),
        metrics: last,
        error,
    }
}

/// The ingestion phase on one server: health check, `/healthz` run, webhook run, drain.
pub(crate) struct Ingestion {
    /// `SQLite` or `PostgreSQL`, plus a note for the diagnostic run.
    pub(crate) backend: &'static str,
    /// A diagnostic run (no embedded workers): no target, no drain.
    pub(crate) diagnostic: bool,
    /// The `/healthz` run.
    pub(crate) healthz: HttpRun,
    /// The webhook run.
    pub(crate) webhook: HttpRun,
    /// The task backlog afterwards (not for diagnostic runs).
    pub(crate) drain: Option<Drain>,
    /// One webhook before the load: status and body.
    pub(crate) sample: String,
    /// Further webhook runs (`--ingest-cycles`): 2xx req/s, errors and drain seconds.
    pub(crate) repeats: Vec<(f64, u64, Option<f64>)>,
}

/// Run the ingestion phase against a started, ready server; `diagnostic` skips the drain
/// (the server runs without workers).
pub(crate) async fn ingestion(
    s: &Settings,
    http: &reqwest::Client,
    server: &mut Server,
    backend: &'static str,
    diagnostic: bool,
) -> Ingestion {
    let sample = match http
        .post(format!("{}/hooks/webhook/bench", server.base()))
        .json(&serde_json::json!({"user": "u1", "conversation": "c1", "text": "/echo hi"}))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            format!("{status} {body}")
        }
        Err(e) => format!("failed: {e}"),
    };
    let healthz = http_load(s, server, Route::Healthz).await;
    let webhook = http_load(s, server, Route::Webhook).await;
    server.record_rss("after the ingestion runs");
    let drain = if diagnostic {
        None
    } else {
        progress(&format!("{}: draining the task backlog", server.label));
        let d = drain_backlog(http, server).await;
        server.record_rss("after the backlog drained");
        Some(d)
    };
    let mut repeats = Vec::new();
    for cycle in 2..=s.ingest_cycles {
        let run = http_load(s, server, Route::Webhook).await;
        server.record_rss(&format!("after webhook run {cycle}"));
        let secs = if diagnostic {
            None
        } else {
            let d = drain_backlog(http, server).await;
            server.record_rss(&format!("after webhook run {cycle} drained"));
            d.drained.then_some(d.secs)
        };
        repeats.push((run.rate(), run.errors(), secs));
    }
    Ingestion {
        repeats,
        backend,
        diagnostic,
        healthz,
        webhook,
        drain,
        sample,
    }
}
