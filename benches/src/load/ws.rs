//! WebSocket sessions: chat round trips and idle sessions for memory.

use super::*;

/// A client WebSocket.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Small client buffers, so 10,000 client sockets stay cheap for the load generator.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Open a chat session (`id` as user and conversation) and read its welcome and history.
pub(crate) async fn open_session(port: u16, id: String) -> Result<Ws, String> {
    let url = format!("ws://127.0.0.1:{port}/ws/chat?user={id}&conversation={id}");
    let open = async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true)
                .await
                .map_err(|e| format!("connect: {e}"))?;
        let mut welcomed = false;
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .map_err(|e| format!("frame is not JSON: {e}"))?;
                    match v["type"].as_str() {
                        Some("welcome") => welcomed = true,
                        Some("history") if welcomed => return Ok(ws),
                        Some("error") => return Err(format!("error frame: {v}")),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("reading: {e}")),
                None => return Err("closed before the history frame".to_owned()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), open)
        .await
        .map_err(|_| "no welcome and history within 30 s".to_owned())?
}

/// Sessions opened in batches.
pub(crate) struct Opened {
    /// The open sockets.
    pub(crate) sockets: Vec<Ws>,
    /// Sessions that failed to open.
    pub(crate) failed: usize,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// Time to open them all, seconds.
    pub(crate) secs: f64,
}

/// Open `n` sessions named `{prefix}{i}`, `batch` at a time; `each` is called with the count
/// opened after every batch.
pub(crate) async fn open_sessions(
    port: u16,
    prefix: &str,
    n: usize,
    batch: usize,
    mut each: impl FnMut(usize),
) -> Opened {
    let started = Instant::now();
    let mut opened = Opened {
        sockets: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
        secs: 0.0,
    };
    let mut next = 0;
    while next < n {
        let end = (next + batch).min(n);
        let results = futures_util::future::join_all(
            (next..end).map(|i| open_session(port, format!("{prefix}{i}"))),
        )
        .await;
        for r in results {
            match r {
                Ok(ws) => opened.sockets.push(ws),
                Err(e) => {
                    opened.failed += 1;
                    opened.first_error.get_or_insert(e);
                }
            }
        }
        next = end;
        each(next);
    }
    opened.secs = started.elapsed().as_secs_f64();
    opened
}

/// What one chat session saw.
#[derive(Debug, Default)]
pub(crate) struct SessionTally {
    /// Messages sent.
    pub(crate) sent: u64,
    /// Round trips of the answered ones.
    pub(crate) latencies: Vec<Duration>,
    /// `error` frames, send or read failures, closed sockets.
    pub(crate) errors: u64,
    /// Messages without their answer within [`REQUEST_TIMEOUT`].
    pub(crate) timeouts: u64,
    /// `message` frames with a text other than the one expected.
    pub(crate) unexpected: u64,
    /// The first problem.
    pub(crate) first_error: Option<String>,
    /// When the first and last message were sent.
    pub(crate) first_sent: Option<Instant>,
    /// When the last message was sent.
    pub(crate) last_sent: Option<Instant>,
}

/// One chat session: message `k` goes at `start + k * interval + offset`, where the offset
/// spreads the sessions evenly over one interval; each waits for its `/echo` answer.
pub(crate) async fn chat_session(
    mut ws: Ws,
    index: usize,
    start: Instant,
    offset: Duration,
    messages: usize,
    interval: Duration,
) -> SessionTally {
    let mut t = SessionTally::default();
    'messages: for k in 0..messages {
        let at = start + offset + interval * u32::try_from(k).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at.into()).await;
        let expected = format!("s{index}m{k}");
        let frame = serde_json::json!({"type": "message", "text": format!("/echo {expected}")});
        let sent = Instant::now();
        if let Err(e) = ws.send(WsMessage::text(frame.to_string())).await {
            t.errors += 1;
            t.first_error.get_or_insert_with(|| format!("send: {e}"));
            break;
        }
        t.sent += 1;
        t.first_sent.get_or_insert(sent);
        t.last_sent = Some(sent);
        let deadline = sent + REQUEST_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline.into(), ws.next()).await;
            let received = Instant::now();
            match next {
                Err(_) => {
                    t.timeouts += 1;
                    t.first_error
                        .get_or_insert_with(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
                    continue 'messages;
                }
                Ok(Some(Ok(WsMessage::Text(text)))) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("message") if v["text"].as_str() == Some(expected.as_str()) => {
                            t.latencies.push(received.duration_since(sent));
                            continue 'messages;
                        }
                        Some("message") => {
                            t.unexpected += 1;
                            t.first_error
                                .get_or_insert_with(|| format!("unexpected message: {v}"));
                        }
                        Some("error") => {
                            t.errors += 1;
                            t.first_error
                                .get_or_insert_with(|| format!("error frame: {v}"));
                            continue 'messages;
                        }
                        _ => {} // typing
                    }
                }
                Ok(Some(Ok(WsMessage::Close(c)))) => {
                    t.errors += 1;
                    t.first_error
                        .get_or_insert_with(|| format!("server closed the socket: {c:?}"));
                    break 'messages;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    t.errors += 1;
                    t.first_error.get_or_insert_with(|| format!("read: {e}"));
                    break 'messages;
                }
                Ok(None) => {
                    t.errors += 1;
                    t.first_error
                        .get_or_insert_with(|| "socket ended".to_owned());
                    break 'messages;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    t
}

/// The chat phase's result.
pub(crate) struct ChatRun {
    /// Sessions asked for.
    pub(crate) sessions: usize,
    /// Sessions opened, failures, first failure, seconds to open.
    pub(crate) open: (usize, usize, Option<String>, f64),
    /// Messages sent.
    pub(crate) sent: u64,
    /// Round trips, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Error frames and socket failures.
    pub(crate) errors: u64,
    /// Unanswered messages.
    pub(crate) timeouts: u64,
    /// Answers with the wrong text.
    pub(crate) unexpected: u64,
    /// The first problem.
    pub(crate) first_error: Option<String>,
    /// Messages per second over the sending span.
    pub(crate) send_rate: f64,
    /// CPU use while the messages went back and forth.
    pub(crate) cpu: CpuUse,
}

/// Open the chat sessions, then let each send its messages.
pub(crate) async fn chat(s: &Settings, server: &mut Server) -> ChatRun {
    progress(&format!(
        "{}: opening {} chat sessions",
        server.label, s.chat_sessions
    ));
    let opened = open_sessions(server.port, "chat-", s.chat_sessions, s.batch, |_| {}).await;
    let open = (
        opened.sockets.len(),
        opened.failed,
        opened.first_error,
        opened.secs,
    );
    server.record_rss(&format!("with {} chat sessions open", open.0));
    progress(&format!(
        "{}: {} sessions each send {} messages, one per {:?}",
        server.label, open.0, s.chat_messages, s.chat_interval
    ));
    let n = opened.sockets.len().max(1);
    let start = Instant::now() + Duration::from_millis(500);
    let handles: Vec<_> = opened
        .sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let offset = s.chat_interval.mul_f64(i as f64 / n as f64);
            tokio::spawn(chat_session(
                ws,
                i,
                start,
                offset,
                s.chat_messages,
                s.chat_interval,
            ))
        })
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let cpu0 = CpuSample::now(server.pid());
    let mut run = ChatRun {
        sessions: s.chat_sessions,
        open,
        sent: 0,
        latencies: Vec::new(),
        errors: 0,
        timeouts: 0,
        unexpected: 0,
        first_error: None,
        send_rate: 0.0,
        cpu: CpuUse::default(),
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for h in handles {
        match h.await {
            Ok(t) => {
                run.sent += t.sent;
                run.latencies.extend(t.latencies);
                run.errors += t.errors;
                run.timeouts += t.timeouts;
                run.unexpected += t.unexpected;
                if run.first_error.is_none() {
                    run.first_error = t.first_error;
                }
                first = match (first, t.first_sent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                last = match (last, t.last_sent) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            Err(e) => {
                run.errors += 1;
                run.first_error
                    .get_or_insert_with(|| format!("session task failed: {e}"));
            }
        }
    }
    run.cpu = CpuSample::now(server.pid()).since(&cpu0);
    if let (Some(a), Some(b)) = (first, last) {
        let span = b.duration_since(a).as_secs_f64();
        if span > 0.0 {
            run.send_rate = (run.sent.saturating_sub(1)) as f64 / span;
        }
    }
    run.latencies.sort_unstable();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.record_rss("after the chat sessions closed");
    progress(&format!(
        "{}: chat p50 {:.2} ms, p99 {:.2} ms, {} errors, {} timeouts",
        server.label,
        ms(percentile(&run.latencies, 0.50)),
        ms(percentile(&run.latencies, 0.99)),
        run.errors,
        run.timeouts
    ));
    run
}

/// Milliseconds of a duration.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One open-and-close cycle of the memory phase.
pub(crate) struct MemoryCycle {
    /// Sessions opened, failures, first failure, seconds to open.
    pub(crate) open: (usize, usize, Option<String>, f64),
    /// Resident memory while opening: (sessions, KiB).
    pub(crate) steps: Vec<(usize, u64)>,
    /// Resident memory with all open, after settling.
    pub(crate) open_kib: u64,
    /// Resident memory 5 s after closing them all.
    pub(crate) closed_kib: u64,
}

/// The memory phase's result.
pub(crate) struct MemoryRun {
    /// Resident memory idle after start, KiB.
    pub(crate) idle_kib: u64,
    /// Sessions per cycle.
    pub(crate) sessions: usize,
    /// The cycles.
    pub(crate) cycles: Vec<MemoryCycle>,
}

/// Resident memory idle, then with `s.idle_sessions` idle sessions, twice.
pub(crate) async fn memory(s: &Settings, server: &mut Server) -> MemoryRun {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = server.record_rss("idle after start");
    let mut run = MemoryRun {
        idle_kib,
        sessions: s.idle_sessions,
        cycles: Vec::new(),
    };
    for cycle in 1..=2 {
        progress(&format!(
            "{}: cycle {cycle}: opening {} idle sessions, {} at a time",
            server.label, s.idle_sessions, s.batch
        ));
        let pid = server.pid();
        let step = (s.idle_sessions / 4).max(1);
        let mut steps = Vec::new();
        let opened = open_sessions(
            server.port,
            &format!("idle{cycle}-"),
            s.idle_sessions,
            s.batch,
            |done| {
                if done % step < s.batch || done == s.idle_sessions {
                    steps.push((done, rss_kib(pid)));
                }
            },
        )
        .await;
        steps.dedup_by_key(|(n, _)| *n / step);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let open_kib = server.record_rss(&format!(
            "cycle {cycle}: {} idle sessions open",
            opened.sockets.len()
        ));
        let open = (
            opened.sockets.len(),
            opened.failed,
            opened.first_error,
            opened.secs,
        );
        drop(opened.sockets);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let closed_kib = server.record_rss(&format!("cycle {cycle}: 5 s after closing them"));
        run.cycles.push(MemoryCycle {
            open,
            steps,
            open_kib,
            closed_kib,
        });
    }
    run
}
