//! Socket Mode: instead of receiving HTTP requests, the app opens a WebSocket to Slack
//! (`apps.connections.open` with the app-level token gives its URL) and Slack sends the same
//! payloads in envelopes over it: `events_api`, `interactive` and `slash_commands`, each
//! acknowledged with `{"envelope_id": …}` once stored. Slack resends an envelope that was not
//! acknowledged, so one that could not be stored (the database is down) is left
//! unacknowledged. `hello` opens a session; `disconnect` asks for a new connection. A failed
//! or dropped connection is opened again after a backoff (1 s doubling to 30 s; back to 1 s
//! once a connection got its `hello`).
//!
//! Slack's connection must exist once per app among the servers sharing a database: the
//! listener holds the lease `slack:socket:<channel>` while it is connected.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use slack_morphism::prelude::SlackCommandEvent;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;

use super::{SlackState, process_command, process_event, process_interaction};
use crate::problem::Problem;

/// How a connection ended without an error.
enum Ended {
    Shutdown,
    /// Slack asked for a new connection.
    Reconnect,
}

/// Stay connected until `shutdown`.
pub(super) async fn run(state: Arc<SlackState>, app_token: String, shutdown: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut live = false;
        match session(&state, &app_token, &shutdown, &mut live).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Reconnect) => {
                backoff = Duration::from_secs(1);
                continue;
            }
            Err(e) => {
                state
                    .stats
                    .api_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if live {
                    // The connection worked before it failed: no reason to wait long.
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(channel = %state.channel, error = %e, ?backoff, "Slack Socket Mode connection failed; reconnecting");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection, until it ends; `live` is set once Slack said `hello`.
async fn session(
    state: &SlackState,
    app_token: &str,
    shutdown: &CancellationToken,
    live: &mut bool,
) -> Result<Ended, String> {
    let url = state
        .api
        .open_connection(app_token)
        .await
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("connecting the socket: {e}"))?;
    tracing::info!(channel = %state.channel, "Slack Socket Mode connected");
    loop {
        let frame = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(Ended::Shutdown);
            }
            frame = ws.next() => frame,
        };
        let frame = match frame {
            None => return Err("Slack closed the socket".into()),
            Some(Err(e)) => return Err(format!("socket: {e}")),
            Some(Ok(f)) => f,
        };
        let text = match frame {
            Ws::Text(t) => t,
            Ws::Close(_) => return Err("Slack closed the socket".into()),
            _ => continue, // pings are answered by the library
        };
        let envelope: Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(channel = %state.channel, error = %e, "Socket Mode frame is not JSON");
                state.stats.ignored.inc("socket frame not JSON");
                continue;
            }
        };
        let kind = envelope["type"].as_str().unwrap_or_default().to_owned();
        let payload = envelope["payload"].clone();
        let outcome = match kind.as_str() {
            "hello" => {
                *live = true;
                continue;
            }
            "disconnect" => return Ok(Ended::Reconnect),
            "events_api" => process_event(state, payload).await.map(|_| ()),
            "interactive" => process_interaction(state, payload).await,
            "slash_commands" => match SlackCommandEvent::deserialize(&payload) {
                Ok(c) => process_command(state, &c).await,
                Err(e) => Err(Problem::bad_request(format!("invalid slash command: {e}"))),
            },
            other => {
                state.stats.ignored.inc(&format!("socket:{other}"));
                Ok(())
            }
        };
        if let Err(p) = &outcome {
            if p.status >= 500 {
                // Not stored: no acknowledgement, so Slack sends it again.
                tracing::warn!(channel = %state.channel, detail = %p.detail, "Socket Mode envelope not stored; Slack will resend it");
                continue;
            }
            tracing::warn!(channel = %state.channel, detail = %p.detail, "Socket Mode envelope refused");
            state.stats.ignored.inc(&format!("socket {kind}: refused"));
        }
        if let Some(id) = envelope["envelope_id"].as_str() {
            let ack = json!({ "envelope_id": id }).to_string();
            ws.send(Ws::text(ack))
                .await
                .map_err(|e| format!("acknowledging: {e}"))?;
        }
    }
}
