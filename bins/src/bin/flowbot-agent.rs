//! `flowbot-agent [--config FILE]`: workers and schedules only, against the shared database
//! that `flowbot-server --no-agent` instances use.
#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its terminal

use flowbot_core::CancellationToken;
use flowbot_server::config::Config;
use flowbot_server::run;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => match args.next() {
                Some(p) => config_path = Some(std::path::PathBuf::from(p)),
                None => return fail("--config needs a file"),
            },
            "-h" | "--help" => {
                println!(
                    "usage: flowbot-agent [--config FILE]\nSame configuration as flowbot-server (database, workers, webhooks, demo)."
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument '{other}'")),
        }
    }
    let config = match Config::from_env(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    run::init_logging(&config);
    let shutdown = CancellationToken::new();
    run::cancel_on_signals(shutdown.clone());
    match run::run_agent(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> std::process::ExitCode {
    eprintln!("error: {message}");
    std::process::ExitCode::from(2)
}
