//! The examples that need no outside service, run as they are: each must finish on its own
//! and print what its doc comment promises. (The Telegram example needs a bot token: it is
//! compiled, not run.)

use std::path::PathBuf;
use std::process::Command;

/// The example binary `name`, built by `cargo test` / `cargo nextest` beside this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    profile
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

fn run(name: &str) -> String {
    let path = example(name);
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{name}.rs"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified());
    match (modified(&path), modified(&source)) {
        (Ok(built), Ok(written)) if built >= written => {}
        _ => panic!(
            "the example binary {} is missing or older than {name}.rs: `cargo nextest run` \
             and `cargo test` build it (not with --test or --lib filters); or run \
             `cargo build -p flowbot-examples --examples`",
            path.display()
        ),
    }
    let out = Command::new(&path)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn the_custom_action_checks_its_schema_and_refuses_in_words() {
    assert_eq!(
        run("custom_action"),
        "/price ACME -> ACME: $123.45\n\
         /price acme! -> Not a ticker symbol (at '/symbol': \"acme!\" does not match \"^[A-Z]{1,5}$\")\n\
         /price ZZZ -> no price for ZZZ\n"
    );
}

#[test]
fn the_custom_channel_carries_a_conversation() {
    assert_eq!(
        run("custom_channel"),
        "bot: hello, you!\nbot: you said: what is this?\nbot: hello, again!\n"
    );
}

#[test]
fn the_workflow_example_completes_its_run() {
    let out = run("workflow");
    assert!(out.contains("bot says: Welcome, Ada!"), "{out}");
    assert!(out.contains("completed"), "{out}");
}
