//! Graceful shutdown on the process's signals.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process gets Ctrl-C (SIGINT) or SIGTERM, for
/// [`Bot::run`](crate::Bot::run) and graceful shutdown. Call it inside a Tokio runtime.
pub fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    cancel_on_signals(token.clone());
    token
}

/// Cancel `token` on Ctrl-C (SIGINT) or SIGTERM. Call it inside a Tokio runtime.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

/// The first of SIGINT and SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
