//! The README's run command, taken from README.md itself and run as a newcomer would: on a
//! fresh data directory, it must serve `/healthz` and `/chat`, answer `/echo` over
//! `/ws/chat`, and exit cleanly on SIGTERM. If someone edits the command in the README, this
//! test runs the edited one.
//!
//! The command builds the server with cargo, so `scripts/test` runs this test on its own after
//! the rest of the suite (it is ignored in the main run, where a build would compete with the
//! other tests for the machine).

mod common;
mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_tungstenite::tungstenite::Message as Ws;

/// The workspace root, where the README lives and where its commands are meant to be run.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bins/ has a parent")
        .to_path_buf()
}

/// The shell commands of the first `sh` code block under the heading `heading`.
fn commands_under(readme: &str, heading: &str) -> Vec<String> {
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == heading)
        .unwrap_or_else(|| panic!("README.md has no heading '{heading}'"));
    let mut in_block = false;
    let mut commands = Vec::new();
    for line in lines {
        let t = line.trim();
        if !in_block {
            assert!(
                !t.starts_with("## "),
                "no ```sh block under '{heading}' in README.md"
            );
            in_block = t == "```sh" || t == "```bash" || t == "```shell";
        } else if t == "```" {
            break;
        } else if !t.is_empty() && !t.starts_with('#') {
            commands.push(t.to_owned());
        }
    }
    assert!(
        !commands.is_empty(),
        "the ```sh block under '{heading}' in README.md has no command"
    );
    commands
}

#[test]
fn the_readme_names_one_run_command_and_one_test_command() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    assert_eq!(commands_under(&readme, "## Run it").len(), 1);
    assert_eq!(
        commands_under(&readme, "## Run the tests"),
        vec!["./scripts/test".to_owned()],
        ".ci/run runs ./scripts/test: the README must say the same"
    );
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec ./scripts/test"),
        ".ci/run must run exactly the README's test command"
    );
}

/// Run `command` (a line of shell) from `cwd` in a process group of its own, with `env`;
/// its stdout goes to `log`, its stderr (cargo's output, the server's log) is piped.
fn shell(command: &str, cwd: &Path, env: &[(&str, String)], log: &Path) -> tokio::process::Child {
    let out = std::fs::File::create(log).expect("log file");
    tokio::process::Command::new("sh")
        .arg("-c")
        // `exec`: the shell becomes cargo, and `cargo run` in turn becomes the server, so
        // the signal below reaches the server itself.
        .arg(format!("exec {command}"))
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("FLOWBOT_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sh")
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds the server with cargo: scripts/test runs it on its own after the suite"]
async fn the_readme_run_command_serves_the_demo_bot_and_stops_on_sigterm() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let command = commands_under(&readme, "## Run it").remove(0);

    // A fresh directory inside the workspace (so cargo finds it) as the working directory:
    // the server's `./data` is created there.
    let cwd = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("readme-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&cwd).expect("fresh directory");
    let log = cwd.join("server.log");

    // `--help` works through the same command.
    let help = shell(&format!("{command} -- --help"), &cwd, &[], &log)
        .wait_with_output()
        .await
        .expect("run --help");
    assert!(
        help.status.success(),
        "{command} -- --help: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(
        log_of(&log).contains("usage: flowbot-server"),
        "{}",
        log_of(&log)
    );

    // The command as written; only the port is moved off 8080 (to one the system picks, read
    // from the line the server logs), so a server the developer runs does not collide with
    // the test.
    let env = [("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0".to_owned())];
    let mut server = shell(&command, &cwd, &env, &log);

    // The first run may build the server: allow for a cold build, then wait for the line the
    // server logs once it listens (cargo's output and the server's log share stderr).
    let mut lines = BufReader::new(server.stderr.take().expect("stderr piped")).lines();
    let mut output = String::new();
    let listening = tokio::time::timeout(Duration::from_secs(1200), async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push_str(&line);
            output.push('\n');
            if line.contains("flowbot-server listening")
                && let Some(at) = line.split("chat at ").nth(1)
                && let Some(base) = at.split("/chat").next()
            {
                return Some(base.to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(base)) = listening else {
        panic!(
            "`{command}` did not start listening ({}); its output:\n{output}",
            if listening.is_ok() {
                "it exited"
            } else {
                "timed out"
            }
        );
    };
    // Keep reading, so the server never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    for path in ["/healthz", "/readyz"] {
        let status = reqwest::get(format!("{base}{path}"))
            .await
            .expect(path)
            .status();
        assert_eq!(status.as_u16(), 200, "GET {path}");
    }
    assert!(
        cwd.join("data").is_dir(),
        "the server keeps its data under ./data"
    );

    let page = reqwest::get(format!("{base}/chat"))
        .await
        .expect("GET /chat");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("page");
    assert!(
        html.contains("/ws/chat"),
        "the chat page connects to /ws/chat"
    );

    assert!(
        html.contains("flowbot.token"),
        "the chat page keeps its visitor token"
    );

    // As the page does: a first visit gets new ids and a token, which resumes them later.
    let url = format!("{}/ws/chat", base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect /ws/chat");
    let welcome = harness::next_frame(&mut ws, "welcome").await;
    let token = welcome["token"]
        .as_str()
        .expect("a visitor token")
        .to_owned();
    ws.send(Ws::text(
        json!({"type": "message", "text": "/echo hello from the README"}).to_string(),
    ))
    .await
    .expect("send");
    let answer = harness::next_frame(&mut ws, "message").await;
    assert_eq!(answer["text"], "hello from the README", "{answer}");
    drop(ws);
    let (mut again, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
        .await
        .expect("reconnect /ws/chat");
    let resumed = harness::next_frame(&mut again, "welcome").await;
    assert_eq!(resumed["conversation"], welcome["conversation"]);
    let history = harness::next_frame(&mut again, "history").await;
    assert_eq!(
        history["messages"][0]["text"], "/echo hello from the README",
        "{history}"
    );
    drop(again);

    // SIGTERM: the server shuts down gracefully and exits 0.
    let pid = server.id().expect("running");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), server.wait())
        .await
        .expect("exit within a minute of SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit after SIGTERM: {status}");
    drain.await.expect("stderr read to its end");
    let _ = std::fs::remove_dir_all(&cwd);
}
