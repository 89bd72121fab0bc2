//! `flowbot-server [--config FILE] [--no-agent]`: the HTTP API, channels and (by default) an
//! embedded agent. With no configuration file it starts on 127.0.0.1:8080 with SQLite under
//! `./data` and the demo bot at http://127.0.0.1:8080/chat.
#![allow(clippy::print_stderr, clippy::print_stdout)] // a command-line program talks to its terminal

use flowbot_core::CancellationToken;
use flowbot_server::config::Config;
use flowbot_server::run;

const USAGE: &str = "usage: flowbot-server [--config FILE] [--no-agent] [--console]\n       flowbot-server [--config FILE] keys create|list|revoke …  (API keys; `keys` for help)\n       flowbot-server [--config FILE] secrets rotate-key|generate-key|list  (stored secrets)\n       flowbot-server [--config FILE] kb ingest|search|list|remove …  (knowledge base; `kb` for help)\n\n\
  --config FILE   TOML configuration (default: $FLOWBOT_CONFIG, else built-in defaults)\n\
  --no-agent      do not run workers here (distributed mode: run flowbot-agent elsewhere)\n\
  --console       also talk to the bot on stdin/stdout\n\
Environment overrides: FLOWBOT_<SECTION>__<KEY>, e.g. FLOWBOT_SERVER__LISTEN=0.0.0.0:8080";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config_path = None;
    let mut no_agent = false;
    let mut console = false;
    let mut keys = None;
    let mut secrets = None;
    let mut kb = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => match args.next() {
                Some(p) => config_path = Some(std::path::PathBuf::from(p)),
                None => return fail("--config needs a file"),
            },
            "--no-agent" => no_agent = true,
            "--console" => console = true,
            "keys" => {
                keys = Some(args.by_ref().collect::<Vec<_>>());
                break;
            }
            "secrets" => {
                secrets = Some(args.by_ref().collect::<Vec<_>>());
                break;
            }
            "kb" => {
                kb = Some(args.by_ref().collect::<Vec<_>>());
                break;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("flowbot-server {}", env!("CARGO_PKG_VERSION"));
                return std::process::ExitCode::SUCCESS;
            }
            other => return fail(&format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    let mut config = match Config::from_env(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    if no_agent {
        config.server.agent = false;
    }
    if let Some(args) = keys {
        return match flowbot_server::keys::command(&config, &args).await {
            Ok(out) => {
                print!("{out}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        };
    }
    if let Some(args) = secrets {
        return match flowbot_server::secrets::command(&config, &args).await {
            Ok(out) => {
                print!("{out}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        };
    }
    if let Some(args) = kb {
        if args.is_empty() {
            println!("{}", flowbot_server::knowledge::USAGE);
            return std::process::ExitCode::SUCCESS;
        }
        return match flowbot_server::knowledge::command(&config, &args).await {
            Ok((out, ok)) => {
                print!("{out}");
                if ok {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::from(1)
                }
            }
            Err(e) => fail(&e.to_string()),
        };
    }
    run::init_logging(&config);
    let shutdown = CancellationToken::new();
    run::cancel_on_signals(shutdown.clone());
    match run::run_server_with(config, console, shutdown, None).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> std::process::ExitCode {
    eprintln!("error: {message}");
    std::process::ExitCode::from(2)
}
