//! The API against its own OpenAPI document: schemathesis (installed into `.venv` by
//! `scripts/test`) generates requests for every documented operation, valid and invalid,
//! and sends them with an admin key to a real server; no answer may be a 5xx, and every
//! answer must match the document (status code, content type, headers, body schema).

mod common;
mod harness;

use std::path::PathBuf;

use harness::start_with;

/// Make a key on the server's database as `flowbot-server keys create` does; the key.
async fn cli_key(config: &flowbot_server::config::Config, name: &str, role: &str) -> String {
    let args: Vec<String> = ["create", "--name", name, "--role", role]
        .map(str::to_owned)
        .to_vec();
    let out = flowbot_server::keys::command(config, &args)
        .await
        .expect("keys create");
    out.lines()
        .find(|l| l.starts_with("fbk_"))
        .unwrap_or_else(|| panic!("a key in {out}"))
        .to_owned()
}

/// The `schemathesis` command of the virtual environment that `scripts/test` makes (beside
/// `FLOWBOT_TEST_PYTHON`, else `.venv`). Required with CI=true; otherwise a missing one
/// skips, loudly.
fn schemathesis() -> Option<PathBuf> {
    let python = std::env::var_os("FLOWBOT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
        });
    let command = python.with_file_name("schemathesis");
    let found = std::process::Command::new(&command)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(command);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "CI=true but there is no {}: run ./scripts/test, which installs it",
        command.display()
    );
    #[allow(clippy::print_stderr)] // the skip must be seen
    {
        eprintln!(
            "SKIPPED: schemathesis run (no {}; ./scripts/test installs it)",
            command.display()
        );
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let s = start_with(|c| {
        c.auth.api_keys = true;
        // Thousands of requests with one key: the per-credential limit (tested on its own in
        // bins/tests/security.rs) would answer most of them with 429. Loopback clients are
        // not limited by address.
        c.limits.api_per_credential_per_minute = 0;
    })
    .await;
    let admin = cli_key(&s.config, "schemathesis", "admin").await;
    // The key that `DELETE /api/v1/keys/{id}` revokes (see schemathesis.toml).
    let spare = cli_key(&s.config, "spare", "viewer").await;
    let spare_id = spare.split('_').nth(1).expect("fbk_<id>_<secret>");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    // schemathesis and hypothesis keep state in the working directory: a fresh one.
    let work = common::TempDir::new("flowbot-schemathesis");

    // The key travels in the environment, never on a command line.
    let out = tokio::process::Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", s.base))
        .arg("--no-color")
        .env("FLOWBOT_SCHEMATHESIS_KEY", &admin)
        .env("FLOWBOT_SCHEMATHESIS_SPARE_KEY", spare_id)
        .current_dir(&work.0)
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found answers that break the OpenAPI document:\n{stdout}\n{stderr}"
    );
    // It did test every operation of the document.
    let count = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|n| n.split('/').next()?.trim().parse::<u32>().ok())
    };
    let (selected, tested) = (count("Selected:"), count("Tested:"));
    assert!(
        selected.is_some_and(|n| n > 0) && selected == tested,
        "{selected:?} operations selected, {tested:?} tested:\n{stdout}"
    );
    s.stop().await;
}
