//! Secrets at rest through the server: the secrets API (write-only, listed by name, admins
//! only, 409 without a key), values encrypted in the database file, workflows using stored
//! secrets (stored after start, changed, deleted) with the values hidden in run records, and
//! `flowbot-server secrets rotate-key` re-encrypting everything so that the new key alone
//! reads it, with the server's debug log free of values and keys; a platform token given as
//! `{{ secrets.NAME }}` read from the stored secrets as the server starts.

mod common;
mod harness;
#[path = "telegram/fake.rs"]
mod telegram;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use flowbot_core::secrets::{KeyRing, SecretError, SecretKey, SecretStore};
use flowbot_server::config::{Config, TelegramMode, TelegramSettings};
use harness::{problem, start_with};
use serde_json::{Value, json};

const VALUE: &str = "sk-live-5ecret-Value-0123456789";
const OTHER: &str = "another-5ecret-Value-9876543210";

/// Make a key on the server's database as `flowbot-server keys create` does; the key.
async fn cli_key(config: &Config, name: &str, role: &str) -> String {
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

/// A new key's text, written to `dir/name`; (text, path).
fn key_file(dir: &common::TempDir, name: &str) -> (String, std::path::PathBuf) {
    let text = SecretKey::generate_text().expect("random key");
    let path = dir.0.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("key file");
    (text, path)
}

async fn json_of(res: reqwest::Response, status: u16) -> Value {
    let code = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(code, status, "{body}");
    body
}

/// Every byte of the SQLite database's files (the database, its WAL).
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_file()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("flowbot.db"))
        {
            all.extend(std::fs::read(&path).expect("database file"));
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_written_listed_and_deleted_by_admins_and_encrypted_on_disk() {
    let dir = common::TempDir::new("flowbot-secrets");
    let (_, key) = key_file(&dir, "key");
    let db_dir = dir.0.clone();
    let s = start_with(|c| {
        c.auth.api_keys = true;
        c.secrets_store.key_file = Some(key);
        c.database.url = format!("sqlite://{}/flowbot.db", db_dir.display());
        c.secrets
            .0
            .insert("from_config".into(), "configured-value-123".into());
    })
    .await;
    let admin = cli_key(&s.config, "root", "admin").await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);

    let put = |name: &str, body: Value, key: &str| {
        http.put(api(&format!("/secrets/{name}")))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let res = put("api_token", json!({"value": VALUE}), &admin)
        .await
        .expect("put");
    let text = res.text().await.expect("body");
    assert!(!text.contains(VALUE), "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("json"),
        json!({"name": "api_token", "created": true})
    );
    let again = json_of(
        put("api_token", json!({"value": VALUE}), &admin)
            .await
            .expect("put"),
        200,
    )
    .await;
    assert_eq!(again["created"], false);
    json_of(
        put("webhook_key", json!({"value": OTHER}), &admin)
            .await
            .expect("put"),
        200,
    )
    .await;

    // Listed by name and time, never with a value.
    let res = http
        .get(api("/secrets"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), 200);
    let text = res.text().await.expect("body");
    assert!(!text.contains(VALUE) && !text.contains(OTHER), "{text}");
    let list: Value = serde_json::from_str(&text).expect("json");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["api_token", "webhook_key"]);
    for item in list["items"].as_array().expect("items") {
        assert_eq!(
            item.as_object().expect("item").keys().collect::<Vec<_>>(),
            ["name", "updated_at"]
        );
        chrono::DateTime::parse_from_rfc3339(item["updated_at"].as_str().expect("time"))
            .expect("an RFC 3339 time");
    }

    // Only admins: the other built-in roles get 403, reading included.
    for role in ["editor", "operator", "viewer"] {
        let made = json_of(
            http.post(api("/keys"))
                .bearer_auth(&admin)
                .json(&json!({"name": role, "role": role}))
                .send()
                .await
                .expect("create key"),
            201,
        )
        .await;
        let key = made["key"].as_str().expect("key").to_owned();
        let list = http
            .get(api("/secrets"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("list");
        problem(list, 403).await;
        let res = put("api_token", json!({"value": "overwritten!"}), &key)
            .await
            .expect("put");
        problem(res, 403).await;
        let res = http
            .delete(api("/secrets/api_token"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("delete");
        problem(res, 403).await;
    }
    problem(
        http.get(api("/secrets")).send().await.expect("anonymous"),
        401,
    )
    .await;

    // Bad input: problems that name the fault and never repeat the value.
    let bad = |name: &'static str, body: &'static str| {
        http.put(api(&format!("/secrets/{name}")))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (name, body, status, says) in [
        (
            "2fa",
            r#"{"value": "sk-live-5ecret-Value-0123456789"}"#,
            400,
            "invalid secret name '2fa'",
        ),
        (
            "with-dash",
            r#"{"value": "sk-live-5ecret-Value-0123456789"}"#,
            400,
            "letters, digits and '_'",
        ),
        (
            "ok_name",
            r#"{"valeur": "sk-live-5ecret-Value-0123456789"}"#,
            400,
            "`value` is missing",
        ),
        (
            "ok_name",
            r#"{"value": "sk-live-5ecret-Value-0123456789", "note": 1}"#,
            400,
            "unknown field `note`",
        ),
        (
            "ok_name",
            r#"{"value": "sk-live-5ecret-Value-0123456789"#,
            400,
            "not valid JSON",
        ),
        ("ok_name", r#"{"value": 12345}"#, 400, "not a string"),
        (
            "ok_name",
            r#"{"value": "abc"}"#,
            422,
            "shorter than 4 bytes",
        ),
        (
            "from_config",
            r#"{"value": "sk-live-5ecret-Value-0123456789"}"#,
            409,
            "set in the configuration ([secrets])",
        ),
    ] {
        let p = problem(bad(name, body).await.expect("put"), status).await;
        let detail = p["detail"].as_str().expect("detail");
        assert!(detail.contains(says), "{name} {body}: {detail}");
        assert!(!detail.contains(VALUE), "{detail}");
    }

    // On disk: the names are there (the right files were read), the values are not.
    let bytes = database_bytes(&dir.0);
    assert!(
        contains(&bytes, "webhook_key"),
        "the database files hold the names"
    );
    assert!(!contains(&bytes, VALUE) && !contains(&bytes, OTHER));

    // The audit log records the changes, not the values.
    let audit = http
        .get(api("/audit?resource=secrets"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("audit")
        .text()
        .await
        .expect("body");
    assert!(audit.contains("/api/v1/secrets/api_token"), "{audit}");
    assert!(!audit.contains(VALUE), "{audit}");

    // Deleted: gone from the list; deleting again is 404.
    let res = http
        .delete(api("/secrets/api_token"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    problem(
        http.delete(api("/secrets/api_token"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("delete"),
        404,
    )
    .await;
    let list = json_of(
        http.get(api("/secrets"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("list"),
        200,
    )
    .await;
    assert_eq!(
        list["items"],
        json!([{"name": "webhook_key", "updated_at": list["items"][0]["updated_at"]}])
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_secrets_api_answers_409_naming_the_setting() {
    let s = start_with(|c| {
        // A variable nobody sets, so the test does not depend on the environment.
        c.secrets_store.key_env = "FLOWBOT_TEST_NO_SUCH_KEY_VARIABLE".into();
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/secrets", s.base);
    for res in [
        http.get(&url).send().await.expect("list"),
        http.put(format!("{url}/x_token"))
            .json(&json!({"value": VALUE}))
            .send()
            .await
            .expect("put"),
        http.delete(format!("{url}/x_token"))
            .send()
            .await
            .expect("delete"),
    ] {
        let p = problem(res, 409).await;
        let detail = p["detail"].as_str().expect("detail");
        assert!(
            detail.contains("no key is configured") && detail.contains("[secrets_store] key_file"),
            "{detail}"
        );
    }
    s.stop().await;
}

/// A Telegram bot's token stored through the API (encrypted on disk) and given in the
/// configuration as `{{ secrets.tg_token }}`: the server reads it as it starts and talks to
/// the Bot API with it. A reference to a secret nobody stored stops the start, naming the
/// setting and the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_tokens_come_from_stored_secrets() {
    let dir = common::TempDir::new("flowbot-secrets-platform");
    let (_, key) = key_file(&dir, "key");
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let base = |c: &mut Config| {
        c.auth.api_keys = true;
        c.secrets_store.key_file = Some(key.clone());
        c.database.url = db.clone();
    };
    let s = start_with(base).await;
    let admin = cli_key(&s.config, "root", "admin").await;
    json_of(
        reqwest::Client::new()
            .put(format!("{}/api/v1/secrets/tg_token", s.base))
            .bearer_auth(&admin)
            .json(&json!({"value": telegram::TOKEN}))
            .send()
            .await
            .expect("put"),
        200,
    )
    .await;
    s.stop().await;
    assert!(!contains(&database_bytes(&dir.0), telegram::TOKEN));

    let tg = telegram::FakeTelegram::start().await;
    let bot = |token: &str| TelegramSettings {
        token: token.into(),
        mode: TelegramMode::Polling,
        api_base: tg.base.clone(),
        poll_timeout_secs: 1,
        secret_token: None,
        public_url: None,
        sends_per_second: 25,
        lease_ttl_secs: 15,
    };
    let s = start_with(|c| {
        base(c);
        c.telegram
            .insert("tg".into(), bot("{{ secrets.tg_token }}"));
    })
    .await;
    // The fake answers only the right token.
    assert_eq!(tg.calls("getMe").len(), 1);
    tg.push(telegram::text(42, "/echo from a stored token"));
    tg.wait_for_text(42, "from a stored token").await;
    s.stop().await;

    let mut config = Config::default();
    base(&mut config);
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config
        .telegram
        .insert("tg".into(), bot("{{ secrets.nobody_stored }}"));
    let e = flowbot_server::run::run_server(config, flowbot_core::CancellationToken::new(), None)
        .await
        .expect_err("a missing secret must stop the start")
        .to_string();
    assert!(
        e.contains("telegram.tg.token") && e.contains("'nobody_stored'"),
        "{e}"
    );
}

/// A local HTTP endpoint that records each request's `Authorization` header and answers
/// `{"seen": <that header>}`.
async fn echo_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::post(move |headers: HeaderMap| {
            let s = s.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                s.lock().expect("lock").push(auth.clone());
                axum::Json(json!({ "seen": auth }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/echo"), seen)
}

/// A workflow that sends `secrets.api_token` to `url` and keeps the answer as its output.
fn call_workflow(url: &str) -> String {
    format!(
        r#"
name: call
nodes:
  - id: call
    action: http_request
    with:
      url: "{url}"
      method: POST
      headers: {{ Authorization: "Bearer {{{{ secrets.api_token }}}}" }}
      json: {{ token_was: "{{{{ secrets.api_token }}}}" }}
    retry: {{ max_attempts: 1 }}
output: {{ answer: "{{{{ nodes.call.output.body.seen }}}}" }}
triggers:
  - hook: call-me
    token_secret: api_token
"#
    )
}

/// Start `call` and wait for the run to end; the run.
async fn run_call(http: &reqwest::Client, base: &str) -> Value {
    let run = json_of(
        http.post(format!("{base}/api/v1/workflows/call/runs"))
            .send()
            .await
            .expect("start"),
        202,
    )
    .await;
    finished(http, base, run["id"].as_str().expect("id")).await
}

/// Poll run `id` until it ends; the run.
async fn finished(http: &reqwest::Client, base: &str, id: &str) -> Value {
    for _ in 0..600 {
        let run = json_of(
            http.get(format!("{base}/api/v1/runs/{id}"))
                .send()
                .await
                .expect("get run"),
            200,
        )
        .await;
        if ["completed", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

/// The run completed, the endpoint saw `value`, and the record shows the secret's name only.
fn assert_hidden(run: &Value, value: &str, seen: &Mutex<Vec<String>>) {
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        seen.lock().expect("lock").last().map(String::as_str),
        Some(format!("Bearer {value}").as_str())
    );
    let text = run.to_string();
    assert!(!text.contains(value), "{text}");
    assert_eq!(
        run["nodes"][0]["input"]["headers"]["Authorization"],
        "Bearer [secret:api_token]"
    );
    assert_eq!(
        run["nodes"][0]["input"]["json"]["token_was"],
        "[secret:api_token]"
    );
    assert_eq!(run["output"]["answer"], "Bearer [secret:api_token]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_use_stored_secrets_as_they_change_and_run_records_hide_them() {
    let dir = common::TempDir::new("flowbot-secrets");
    let (_, key) = key_file(&dir, "key");
    let (url, seen) = echo_server().await;
    let s = start_with(|c| {
        c.secrets_store.key_file = Some(key);
        c.network.allow = vec!["127.0.0.1".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);
    let apply = || {
        http.post(api("/workflows"))
            .header("content-type", "application/yaml")
            .body(call_workflow(&url))
            .send()
    };

    // Before the secret is stored, the definition is refused, naming it.
    let p = problem(apply().await.expect("apply"), 422).await;
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("no secret named `api_token`"),
        "{p}"
    );
    // Stored after the server started: the definition is accepted and the run uses it.
    let put = |value: &'static str| {
        http.put(api("/secrets/api_token"))
            .json(&json!({ "value": value }))
            .send()
    };
    assert_eq!(put(VALUE).await.expect("put").status(), 200);
    json_of(apply().await.expect("apply"), 201).await;
    let run = run_call(&http, &s.base).await;
    assert_hidden(&run, VALUE, &seen);

    // A trigger hook's token can be a stored secret.
    let hook = format!("{}/hooks/trigger/call-me", s.base);
    let started = json_of(
        http.post(&hook)
            .bearer_auth(VALUE)
            .json(&json!({}))
            .send()
            .await
            .expect("hook"),
        202,
    )
    .await;
    let run = finished(&http, &s.base, started["run_id"].as_str().expect("run id")).await;
    assert_hidden(&run, VALUE, &seen);
    problem(
        http.post(&hook)
            .bearer_auth("wrong-token")
            .json(&json!({}))
            .send()
            .await
            .expect("hook"),
        401,
    )
    .await;

    // Changed: the next run sends the new value, and hides it.
    assert_eq!(put(OTHER).await.expect("put").status(), 200);
    let run = run_call(&http, &s.base).await;
    assert_hidden(&run, OTHER, &seen);

    // Deleted: the node fails, naming the secret, rather than sending nothing.
    let res = http
        .delete(api("/secrets/api_token"))
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    let calls = seen.lock().expect("lock").len();
    let run = run_call(&http, &s.base).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["nodes"][0]["error"].as_str().expect("error");
    assert!(
        error.contains("no secret named `api_token` is configured or stored"),
        "{error}"
    );
    assert_eq!(seen.lock().expect("lock").len(), calls, "nothing was sent");

    // Stored under a key this server does not have (another server's, say): the node that
    // uses it fails with the reason, naming the secret and not the value.
    let store = flowbot_server::run::open_store(&s.config)
        .await
        .expect("store");
    let stranger =
        KeyRing::new(SecretKey::parse(&SecretKey::generate_text().expect("random")).expect("key"));
    SecretStore::new(store, stranger)
        .put("api_token", VALUE)
        .await
        .expect("put");
    let run = run_call(&http, &s.base).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["nodes"][0]["error"].as_str().expect("error");
    assert!(
        error.contains("`secrets.api_token`: secret 'api_token' was encrypted under key"),
        "{error}"
    );
    assert!(!run.to_string().contains(VALUE));
    assert_eq!(seen.lock().expect("lock").len(), calls, "nothing was sent");
    s.stop().await;
}

const SERVER: &str = env!("CARGO_BIN_EXE_flowbot-server");

/// `flowbot-server <args>` with `env`; (exit code, stdout, stderr).
async fn server_command(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(SERVER)
        .args(args)
        .env_remove("FLOWBOT_SECRETS_KEY")
        .env_remove("FLOWBOT_SECRETS_PREVIOUS_KEYS")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("run flowbot-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_key_re_encrypts_everything_so_the_new_key_alone_reads_it() {
    let dir = common::TempDir::new("flowbot-rotate");
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let (old, old_file) = key_file(&dir, "old");
    let new = SecretKey::generate_text().expect("random key");
    let new_id = SecretKey::parse(&new).expect("key").id().to_owned();

    // Two secrets stored under the old key.
    let db_url = db.clone();
    let s = start_with(|c| {
        c.secrets_store.key_file = Some(old_file);
        c.database.url = db_url;
    })
    .await;
    let http = reqwest::Client::new();
    for (name, value) in [("api_token", VALUE), ("webhook_key", OTHER)] {
        let res = http
            .put(format!("{}/api/v1/secrets/{name}", s.base))
            .json(&json!({ "value": value }))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status(), 200);
    }
    s.stop().await;

    let env = |extra: &[(&str, &str)]| {
        let mut e = vec![common::kv("FLOWBOT_DATABASE__URL", db.clone())];
        e.extend(extra.iter().map(|(k, v)| common::kv(k, *v)));
        e
    };
    // The new key alone cannot rotate: it cannot read the values. Nothing changes.
    let (code, _, err) = server_command(
        &["secrets", "rotate-key"],
        &env(&[("FLOWBOT_SECRETS_KEY", &new)]),
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("secret 'api_token' was encrypted under key")
            && err.contains("configure that key as a previous key"),
        "{err}"
    );
    // No key at all: the command says where it looked.
    let (code, _, err) = server_command(&["secrets", "rotate-key"], &env(&[])).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("FLOWBOT_SECRETS_KEY"), "{err}");

    // The new key with the old one as previous: everything is re-encrypted.
    let (code, out, err) = server_command(
        &["secrets", "rotate-key"],
        &env(&[
            ("FLOWBOT_SECRETS_KEY", &new),
            ("FLOWBOT_SECRETS_PREVIOUS_KEYS", &old),
        ]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("re-encrypted 2 secrets under key {new_id}; 0 already used it\n")
    );
    let (code, out, err) = server_command(
        &["secrets", "rotate-key"],
        &env(&[
            ("FLOWBOT_SECRETS_KEY", &new),
            ("FLOWBOT_SECRETS_PREVIOUS_KEYS", &old),
        ]),
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        format!("re-encrypted 0 secrets under key {new_id}; 2 already used it\n")
    );
    let (code, out, err) =
        server_command(&["secrets", "list"], &env(&[("FLOWBOT_SECRETS_KEY", &new)])).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.lines().all(|l| l.contains(&format!("key {new_id}"))),
        "{out}"
    );
    assert!(!out.contains(VALUE) && !out.contains(OTHER), "{out}");

    // Read back from the database: the new key alone opens both; the old one, neither.
    let mut config = Config::default();
    config.database.url = db.clone();
    let store = flowbot_server::run::open_store(&config)
        .await
        .expect("store");
    let with_new = SecretStore::new(
        store.clone(),
        KeyRing::new(SecretKey::parse(&new).expect("key")),
    );
    let all = with_new.all().await.expect("the new key reads everything");
    assert_eq!(all.get("api_token").map(String::as_str), Some(VALUE));
    assert_eq!(all.get("webhook_key").map(String::as_str), Some(OTHER));
    let with_old = SecretStore::new(
        store.clone(),
        KeyRing::new(SecretKey::parse(&old).expect("key")),
    );
    assert!(matches!(
        with_old.get("api_token").await,
        Err(SecretError::UnknownKey { .. })
    ));
    drop((with_new, with_old, store));

    // A server with the new key only runs a workflow with the secret; its debug log holds
    // neither values nor keys.
    let (url, seen) = echo_server().await;
    let log = dir.0.join("server.log");
    let address_file = dir.0.join("server.addr");
    let mut child = tokio::process::Command::new(SERVER)
        .envs(
            env(&[
                ("FLOWBOT_SECRETS_KEY", &new),
                ("FLOWBOT_SERVER__LISTEN", "127.0.0.1:0"),
                (
                    "FLOWBOT_SERVER__ADDRESS_FILE",
                    &address_file.display().to_string(),
                ),
                ("FLOWBOT_NETWORK__ALLOW", "[\"127.0.0.1\"]"),
                ("FLOWBOT_LOG__LEVEL", "debug"),
            ])
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .env_remove("FLOWBOT_SECRETS_PREVIOUS_KEYS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let base = common::listening_at(&mut child, &address_file, &log).await;
    common::wait_ready(&base, &log).await;
    json_of(
        http.post(format!("{base}/api/v1/workflows"))
            .header("content-type", "application/yaml")
            .body(call_workflow(&url))
            .send()
            .await
            .expect("apply"),
        201,
    )
    .await;
    let run = run_call(&http, &base).await;
    assert_hidden(&run, VALUE, &seen);
    child.kill().await.expect("kill");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("stored secrets are on"), "{said}");
    for hidden in [VALUE, OTHER, new.as_str(), old.as_str()] {
        assert!(!said.contains(hidden), "the log holds a secret");
    }
}
