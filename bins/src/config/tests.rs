//! The tests of the configuration: defaults, files, environment overrides, and every
//! refusal naming its key.

use super::*;

fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("flowbot-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{}.toml", toml_text.len()));
    std::fs::write(&path, toml_text).expect("write");
    let r = Config::load(
        Some(&path),
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let _ = std::fs::remove_file(&path);
    r
}

#[test]
fn defaults_need_no_file() {
    let c = Config::load(None, Vec::new()).expect("defaults");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert!(c.server.agent && c.web.enabled && c.demo.enabled);
    assert_eq!(c.database.url, "sqlite://./data/flowbot.db");
    assert!(c.server.cors_origins.is_empty(), "CORS off by default");
}

#[test]
fn worker_settings_are_checked_by_key() {
    let c = Config::load(None, Vec::new()).expect("defaults");
    assert_eq!(
        (c.workers.lease_secs, c.workers.recover_interval_ms),
        (10, 1000)
    );
    let w = c.workers.worker_config("server-1".into());
    assert_eq!(w.lease, std::time::Duration::from_secs(10));
    assert!(
        w.heartbeat < w.lease && w.heartbeat * 3 >= w.lease - std::time::Duration::from_millis(1)
    );
    assert_eq!(w.liveness, flowbot_core::task::Liveness::Auto);
    w.validate().expect("the defaults fit together");
    let env = |pairs: &[(&str, &str)]| {
        Config::load(
            None,
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    };
    for (var, value, key) in [
        ("FLOWBOT_WORKERS__LEASE_SECS", "1", "workers.lease_secs"),
        ("FLOWBOT_WORKERS__LEASE_SECS", "86401", "workers.lease_secs"),
        (
            "FLOWBOT_WORKERS__LEASE_SECS",
            "9223372036854775807",
            "workers.lease_secs",
        ),
        (
            "FLOWBOT_WORKERS__RECOVER_INTERVAL_MS",
            "0",
            "workers.recover_interval_ms",
        ),
        (
            "FLOWBOT_WORKERS__RECOVER_INTERVAL_MS",
            "3600001",
            "workers.recover_interval_ms",
        ),
        (
            "FLOWBOT_WORKERS__CONCURRENCY",
            "100001",
            "workers.concurrency",
        ),
        (
            "FLOWBOT_WORKERS__LIVENESS_DIR",
            "\"\"",
            "workers.liveness_dir",
        ),
    ] {
        let e = env(&[(var, value)]).expect_err(value);
        assert_eq!(e.path, key, "{var}={value}: {e}");
        assert!(!e.message.is_empty());
    }
    let e = env(&[("FLOWBOT_WORKERS__LIVENESS", "maybe")]).expect_err("not a bool");
    assert!(e.path.starts_with("workers"), "{e}");
    let c = env(&[
        ("FLOWBOT_WORKERS__LEASE_SECS", "86400"),
        ("FLOWBOT_WORKERS__LIVENESS", "false"),
    ])
    .expect("in range");
    let w = c.workers.worker_config("agent-1".into());
    assert_eq!(w.liveness, flowbot_core::task::Liveness::Off);
    w.validate().expect("a day's lease is allowed");
    let c = env(&[("FLOWBOT_WORKERS__LIVENESS_DIR", "/run/flowbot")]).expect("a dir");
    assert_eq!(
        c.workers.worker_config("a".into()).liveness,
        flowbot_core::task::Liveness::Dir("/run/flowbot".into())
    );
}

#[test]
fn file_and_environment_overrides() {
    let c = load(
        "[server]\nlisten = \"127.0.0.1:9000\"\n[webhooks.crm]\ncallback_url = \"http://127.0.0.1:1/cb\"\n",
        &[
            ("FLOWBOT_SERVER__AGENT", "false"),
            ("FLOWBOT_WORKERS__CONCURRENCY", "4"),
            ("FLOWBOT_DATABASE__URL", "postgres://u:secret@db/flowbot"),
            ("FLOWBOT_WEBHOOKS__CRM__SECRET", "0123456789abcdef0123"),
            ("FLOWBOT_TEST_POSTGRES_URL", "ignored: no __ in the name"),
        ],
    )
    .expect("valid");
    assert_eq!(c.server.listen.port(), 9000);
    assert!(!c.server.agent);
    assert_eq!(c.workers.concurrency, 4);
    assert_eq!(c.database.url, "postgres://u:secret@db/flowbot");
    assert_eq!(
        c.webhooks["crm"].secret.as_deref(),
        Some("0123456789abcdef0123")
    );
}

#[test]
fn errors_name_the_key() {
    let e = load("[server]\nlisen = \"x\"\n", &[]).expect_err("unknown key");
    assert_eq!(e.path, "server.lisen", "{e}");
    let e = load("[server]\nlisten = \"not an address\"\n", &[]).expect_err("bad value");
    assert_eq!(e.path, "server", "{e}");
    assert!(e.message.contains("invalid socket address"), "{e}");
    let e = load("[nope]\n", &[]).expect_err("unknown section");
    assert_eq!(e.path, "nope");
    let e = load("", &[("FLOWBOT_WORKERS__CONCURRENCY", "0")]).expect_err("zero workers");
    assert_eq!(e.path, "workers.concurrency");
    let e = load("", &[("FLOWBOT_DATABASE__URL", "mysql://u:pw@h/db")]).expect_err("scheme");
    assert_eq!(e.path, "database.url");
    assert!(!e.message.contains("pw"), "password redacted: {e}");
    let e = load("", &[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", "0")]).expect_err("share");
    assert_eq!(e.path, "database.sqlite_work_share");
    assert!(e.message.contains("between 0.01 and 1"), "{e}");
    let ok = load("[database]\nsqlite_work_share = 1\n", &[]).expect("integer share");
    assert!((ok.database.sqlite_work_share - 1.0).abs() < f64::EPSILON);
    let e = load("[notifiers.ops]\nkind = \"carrier_pigeon\"\n", &[]).expect_err("kind");
    assert!(e.path.starts_with("notifiers.ops"), "{e}");
    assert!(e.message.contains("carrier_pigeon"), "{e}");
    let e = load("[notifiers.ops]\nkind = \"ntfy\"\n", &[]).expect_err("topic");
    assert!(
        e.path.starts_with("notifiers.ops") && e.message.contains("topic"),
        "{e}"
    );
    let e = load(
        "[notifiers.ops]\nkind = \"slack_webhook\"\nurl = \"ftp://x\"\n",
        &[],
    )
    .expect_err("url");
    assert_eq!(e.path, "notifiers.ops");
    let ok = load(
        "[notifiers.ops]\nkind = \"pushover\"\ntoken = \"t0ken\"\nuser = \"u\"\n",
        &[],
    )
    .expect("pushover");
    assert!(
        !format!("{ok:?}").contains("t0ken"),
        "tokens stay out of Debug"
    );
    let e = load("", &[("FLOWBOT_LOG__LEVEL", "info,=[")]).expect_err("filter");
    assert_eq!(e.path, "log.level");
    let e = load("[webhooks.crm]\ncallbak_url = \"x\"\n", &[]).expect_err("typo in webhook");
    assert_eq!(e.path, "webhooks.crm.callbak_url");
    let e = load("this is not toml", &[]).expect_err("syntax");
    assert!(e.path.ends_with(".toml"), "{e}");
}

#[test]
fn telegram_sections() {
    let token = "123456:secret-token_abcdef";
    let ok = load(
        "[telegram.support]\nmode = \"webhook\"\nsecret_token = \"s3cret\"\n",
        &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
    )
    .expect("token from the environment");
    let t = &ok.telegram["support"];
    assert_eq!((t.mode, t.token.as_str()), (TelegramMode::Webhook, token));
    assert_eq!(t.api_base, "https://api.telegram.org");
    assert!(!format!("{ok:?}").contains("secret-token"), "{ok:?}");
    let e = load("[telegram.support]\nmode = \"polling\"\n", &[]).expect_err("no token");
    assert!(
        e.path.starts_with("telegram.support") && e.message.contains("token"),
        "{e}"
    );
    let e = load(
        "[telegram.support]\nmode = \"webhook\"\n",
        &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
    )
    .expect_err("webhook without secret");
    assert_eq!(e.path, "telegram.support");
    assert!(e.message.contains("secret_token"), "{e}");
    let e = load("[telegram.support]\ntoken = \"nonsense\"\n", &[]).expect_err("token");
    assert!(e.message.contains("not a bot token"), "{e}");
    let e = load(
        "[telegram.support]\nmode = \"carrier\"\n",
        &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
    )
    .expect_err("mode");
    assert!(
        e.path.starts_with("telegram.support") && e.message.contains("carrier"),
        "{e}"
    );
}

/// Environment only, no file.
fn env_only(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(
        None,
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
}

/// A file of its own (`load` names files by their length, shared between tests).
pub(super) fn load_unique(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let path = std::env::temp_dir().join(format!("flowbot-config-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml_text).expect("write");
    let r = Config::load(
        Some(&path),
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let _ = std::fs::remove_file(&path);
    r
}

/// Every duration key, given any number (or something else) through the environment:
/// the configuration loads with the value in its range, or fails naming the key, never
/// panics. (bins has no property-test dependency; the values sweep the edges and a
/// pseudo-random spread.)
#[test]
fn durations_are_in_range_or_name_their_key() {
    let keys: &[(&str, &str, u64, u64)] = &[
        (
            "FLOWBOT_SERVER__REQUEST_TIMEOUT_SECS",
            "server.request_timeout_secs",
            1,
            86_400,
        ),
        (
            "FLOWBOT_SERVER__SHUTDOWN_TIMEOUT_SECS",
            "server.shutdown_timeout_secs",
            0,
            3600,
        ),
        (
            "FLOWBOT_WORKERS__POLL_INTERVAL_MS",
            "workers.poll_interval_ms",
            1,
            3_600_000,
        ),
        (
            "FLOWBOT_RULES__POLL_INTERVAL_MS",
            "rules.poll_interval_ms",
            50,
            3_600_000,
        ),
        (
            "FLOWBOT_WEBHOOKS__CRM__REPLAY_WINDOW_SECS",
            "webhooks.crm.replay_window_secs",
            1,
            86_400,
        ),
    ];
    let mut values: Vec<String> = [
        "0",
        "1",
        "49",
        "50",
        "3600",
        "3601",
        "86400",
        "86401",
        "3600000",
        "3600001",
        "18446744073709551",
        "9223372036854775807",
        "18446744073709551615",
        "99999999999999999999999",
        "-1",
        "-9223372036854775808",
        "1.5",
        "nan",
        "inf",
        "-inf",
        "\"30s\"",
        "soon",
        "",
    ]
    .iter()
    .map(|v| (*v).to_owned())
    .collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..64 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        values.push((x >> (x % 64)).to_string());
    }
    for (var, key, min, max) in keys {
        for v in &values {
            match env_only(&[(*var, v.as_str())]) {
                Ok(c) => {
                    let got = match *key {
                        "server.request_timeout_secs" => c.server.request_timeout_secs,
                        "server.shutdown_timeout_secs" => c.server.shutdown_timeout_secs,
                        "workers.poll_interval_ms" => c.workers.poll_interval_ms,
                        "rules.poll_interval_ms" => c.rules.poll_interval_ms,
                        _ => c.webhooks["crm"].replay_window_secs.unwrap_or_default(),
                    };
                    assert!(
                        (*min..=*max).contains(&got),
                        "{key} = {v} accepted as {got}"
                    );
                }
                Err(e) => assert!(
                    key.starts_with(e.path.as_str()) && !e.message.is_empty(),
                    "{key} = {v}: {e}"
                ),
            }
        }
    }
    let e = env_only(&[(
        "FLOWBOT_SERVER__REQUEST_TIMEOUT_SECS",
        "9223372036854775807",
    )])
    .expect_err("too long");
    assert_eq!(e.path, "server.request_timeout_secs");
    assert!(e.message.contains("must be from 1 to 86400 (1 day)"), "{e}");
    // The SQLite writer's share: NaN and the infinities are refused by name too.
    for v in [
        "nan",
        "inf",
        "-inf",
        "-0.0",
        "0",
        "0.009",
        "1.0000001",
        "1e308",
        "-1e308",
    ] {
        let e = env_only(&[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", v)]).expect_err("out of range");
        assert_eq!(e.path, "database.sqlite_work_share", "{v}: {e}");
    }
    for v in ["0.01", "0.5", "1"] {
        env_only(&[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", v)]).expect("in range");
    }
}

/// A platform lease's ttl is 3 to 3600 seconds; past it the section is refused with the
/// key named, never a multiplication that overflows.
#[test]
fn platform_lease_ttls_are_in_range() {
    let token = "123456:secret-token_abcdef";
    for (v, ok) in [
        ("2", false),
        ("3", true),
        ("3600", true),
        ("3601", false),
        ("18446744073709552", false),
        ("9223372036854775807", false),
    ] {
        let telegram = load_unique(
            &format!("[telegram.support]\nlease_ttl_secs = {v}\n"),
            &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
        );
        let discord = load_unique(
            &format!(
                "[discord.d]\nbot_token = \"bot-token-0123456789abcdef\"\napplication_id = \"1\"\nlease_ttl_secs = {v}\n"
            ),
            &[],
        );
        for (what, r) in [("telegram.support", telegram), ("discord.d", discord)] {
            match r {
                Ok(_) => assert!(ok, "{what} lease_ttl_secs = {v} accepted"),
                Err(e) => {
                    assert!(!ok, "{what} lease_ttl_secs = {v}: {e}");
                    assert_eq!(e.path, what, "{e}");
                    assert!(
                        e.message.contains("lease_ttl_secs must be from 3 to 3600"),
                        "{e}"
                    );
                }
            }
        }
    }
}

#[test]
fn web_identity_keys_are_read_and_checked_by_key() {
    let load = |env: &[(&str, &str)]| {
        Config::load(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    };
    let c = load(&[
        (
            "FLOWBOT_WEB__SECRET",
            "a-secret-of-thirty-two-bytes-0123456789",
        ),
        (
            "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
            "https://login.example.com/jwks.json",
        ),
        ("FLOWBOT_WEB__HOST_IDENTITY__ALGORITHMS", r#"["ES256"]"#),
        ("FLOWBOT_WEB__HOST_IDENTITY__AUDIENCE", "flowbot-chat"),
    ])
    .expect("valid");
    let host = c.web.host_identity.as_ref().expect("host identity");
    assert_eq!(host.user_claim, "sub");
    assert_eq!(host.algorithms, ["ES256"]);
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("thirty-two"),
        "the secret is hidden: {debug}"
    );

    // Refused under `web`, the message naming the key within it.
    let refused = |env: &[(&str, &str)], key: &str| {
        let e = load(env).expect_err("refused");
        assert_eq!(e.path, "web", "{e}");
        assert!(e.message.starts_with(key), "{key}: {e}");
        e
    };
    refused(&[("FLOWBOT_WEB__SECRET", "short")], "secret is 5 bytes");
    refused(
        &[("FLOWBOT_WEB__TOKEN_MAX_AGE_SECS", "5")],
        "token_max_age_secs must be from 60",
    );
    // Neither secrets nor a JWKS URL.
    refused(
        &[("FLOWBOT_WEB__HOST_IDENTITY__USER_CLAIM", "email")],
        "host_identity: give either",
    );
    refused(
        &[
            (
                "FLOWBOT_WEB__HOST_IDENTITY__SECRETS",
                r#"["0123456789abcdef0123456789abcdef"]"#,
            ),
            (
                "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
                "https://login.example.com/jwks.json",
            ),
        ],
        "host_identity: give either",
    );
    refused(
        &[
            (
                "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
                "https://login.example.com/jwks.json",
            ),
            ("FLOWBOT_WEB__HOST_IDENTITY__ALGORITHMS", r#"["none"]"#),
        ],
        "host_identity.algorithms",
    );
    let short = refused(
        &[("FLOWBOT_WEB__HOST_IDENTITY__SECRETS", r#"["too short"]"#)],
        "host_identity",
    );
    assert!(short.message.contains("at least 32"), "{short}");
    assert!(
        !short.to_string().contains("too short"),
        "the secret is not echoed"
    );
    refused(
        &[
            (
                "FLOWBOT_WEB__HOST_IDENTITY__SECRETS",
                r#"["0123456789abcdef0123456789abcdef"]"#,
            ),
            ("FLOWBOT_WEB__HOST_IDENTITY__LEEWAY_SECS", "90000"),
        ],
        "host_identity",
    );
}
