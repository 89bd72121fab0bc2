//! Who may use the admin API: API keys (made on the command line and through the API,
//! revoked, expired), the authorization matrix over every route of the OpenAPI document,
//! DNS rebinding and cross-site changes on an open loopback server, and the refusal to serve
//! an open API to the network.

mod common;
mod harness;

use std::collections::BTreeMap;

use flowbot_server::http::auth::{Policy, policy};
use harness::{problem, start_with};
use reqwest::Method;
use serde_json::{Value, json};

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

/// Send `req`; its answer's JSON body.
async fn json_of(req: reqwest::RequestBuilder) -> Value {
    req.send()
        .await
        .expect("send")
        .json()
        .await
        .expect("a JSON answer")
}

/// A path of the document with its parameters filled in.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{id}" => "1".to_owned(),
            s if s.starts_with('{') => "x".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_matrix_says() {
    let s = start_with(|c| {
        c.auth.api_keys = true;
        c.auth.roles.insert(
            "support".into(),
            vec!["conversations:read".into(), "sessions:*".into()],
        );
    })
    .await;
    let admin = cli_key(&s.config, "root", "admin").await;
    let http = reqwest::Client::new();

    // The other roles' keys come from the API.
    let mut keys = BTreeMap::new();
    for role in ["editor", "operator", "viewer", "support"] {
        let res = http
            .post(format!("{}/api/v1/keys", s.base))
            .bearer_auth(&admin)
            .json(&json!({"name": format!("{role} key"), "role": role}))
            .send()
            .await
            .expect("create key");
        assert_eq!(res.status().as_u16(), 201);
        let made: Value = res.json().await.expect("json");
        assert_eq!(made["role"], role);
        keys.insert(role, made["key"].as_str().expect("key").to_owned());
    }
    keys.insert("admin", admin.clone());
    let roles = s.config.auth.roles().expect("roles");

    let doc = json_of(http.get(format!("{}/api/v1/openapi.json", s.base))).await;
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        // Platform webhooks and web chat are public surfaces with their own verification.
        if !(template.starts_with("/api/v1/") || template == "/metrics") {
            continue;
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            let m: Method = method.to_uppercase().parse().expect("method");
            let rule = policy(&m, template);
            assert_ne!(
                rule,
                Policy::Missing,
                "{method} {template} has no access policy"
            );
            let url = format!("{}{}", s.base, concrete(template));
            let send = |key: Option<&str>| {
                let mut req = http.request(m.clone(), &url);
                if matches!(m, Method::POST | Method::PUT | Method::PATCH) {
                    req = req.json(&json!({}));
                }
                if let Some(k) = key {
                    req = req.bearer_auth(k);
                }
                req.send()
            };
            let anonymous = send(None).await.expect("send").status().as_u16();
            match rule {
                Policy::Public => assert!(
                    anonymous != 401 && anonymous != 403,
                    "{method} {template} is public, got {anonymous}"
                ),
                _ => assert_eq!(anonymous, 401, "{method} {template} without a credential"),
            }
            let bad = send(Some(
                "fbk_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
            ))
            .await
            .expect("send")
            .status()
            .as_u16();
            if rule != Policy::Public {
                assert_eq!(bad, 401, "{method} {template} with an unknown key");
            }
            for (role, key) in &keys {
                let status = send(Some(key)).await.expect("send").status().as_u16();
                let allowed = match rule {
                    Policy::Public | Policy::Authenticated => true,
                    Policy::Needs(p) => roles.get(role).expect("role").allows(p),
                    Policy::Missing => false,
                };
                if allowed {
                    assert!(
                        status != 401 && status != 403 && status < 500,
                        "{method} {template} as {role}: allowed, got {status}"
                    );
                } else {
                    assert_eq!(status, 403, "{method} {template} as {role}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 40, "the matrix covered {checked} routes");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_stored_hashed_revoked_and_expire() {
    let s = start_with(|c| c.auth.api_keys = true).await;
    let admin = cli_key(&s.config, "root", "admin").await;
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{}/api/v1{path}", s.base);

    let me = json_of(http.get(api("/whoami")).header("x-api-key", &admin)).await;
    assert_eq!(
        (me["subject"].as_str(), me["role"].as_str()),
        (Some("root"), Some("admin"))
    );
    assert_eq!(me["method"], "api_key");

    let made = json_of(
        http.post(api("/keys"))
            .bearer_auth(&admin)
            .json(&json!({"name": "ci", "role": "viewer"})),
    )
    .await;
    let key = made["key"].as_str().expect("key").to_owned();
    let id = made["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("fbk_{id}_")));

    // Listing and reading never show the secret, nor does the database hold it.
    let listed = http
        .get(api("/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    let secret = key.rsplit('_').next().expect("secret");
    assert!(listed.contains(&id) && !listed.contains(secret), "{listed}");
    let db = std::fs::read(s.config.database.url.trim_start_matches("sqlite://")).expect("db");
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored"
    );

    // The viewer reads, cannot change, and cannot manage keys.
    let get = |k: &str, path: &str| http.get(api(path)).bearer_auth(k.to_owned()).send();
    assert_eq!(get(&key, "/rules").await.expect("rules").status(), 200);
    let denied = problem(get(&key, "/keys").await.expect("keys"), 403).await;
    assert!(
        denied["detail"]
            .as_str()
            .expect("detail")
            .contains("keys:read"),
        "{denied}"
    );

    // Bad input to the keys API is a clear 4xx.
    for (body, status) in [
        (json!({"name": "x", "role": "wizard"}), 422),
        (json!({"name": "", "role": "viewer"}), 422),
        (
            json!({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            422,
        ),
        (json!({"name": "x"}), 400),
    ] {
        let res = http
            .post(api("/keys"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .expect("create");
        problem(res, status).await;
    }

    // Revoked: refused at once.
    let res = http
        .delete(api(&format!("/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 200);
    let refused = problem(get(&key, "/rules").await.expect("rules"), 401).await;
    assert_eq!(refused["detail"], "the API key was revoked");
    let info: Value = get(&admin, &format!("/keys/{id}"))
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    assert!(
        info["revoked_at"].is_string() && info["last_used_at"].is_string(),
        "{info}"
    );

    // A key past its expiry is refused.
    let soon = flowbot_core::clock::now() + chrono::Duration::hours(1);
    let short = json_of(
        http.post(api("/keys"))
            .bearer_auth(&admin)
            .json(&json!({"name": "short", "role": "viewer", "expires_at": soon})),
    )
    .await;
    let short = short["key"].as_str().expect("key").to_owned();
    assert_eq!(get(&short, "/rules").await.expect("rules").status(), 200);
    // An hour and a second later (the server shares this process's clock).
    flowbot_core::clock::skip(std::time::Duration::from_secs(3601));
    let expired = problem(get(&short, "/rules").await.expect("rules"), 401).await;
    assert_eq!(expired["detail"], "the API key has expired");

    // Malformed credentials.
    for bad in ["fbk_nothex", "Basic abc", "eyJhbGciOiJub25lIn0.e30."] {
        let res = http
            .get(api("/rules"))
            .header(
                "authorization",
                if bad.starts_with("Basic") {
                    bad.to_owned()
                } else {
                    format!("Bearer {bad}")
                },
            )
            .send()
            .await
            .expect("send");
        let p = problem(res, 401).await;
        assert!(!p["detail"].as_str().expect("detail").contains(bad), "{p}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loopback_api_refuses_foreign_hosts_and_cross_site_changes() {
    let s = start_with(|_| {}).await;
    let http = reqwest::Client::new();
    let rules = format!("{}/api/v1/rules", s.base);
    // Local tools need nothing.
    assert_eq!(http.get(&rules).send().await.expect("get").status(), 200);
    // A page served from a name that resolves here (DNS rebinding) is refused.
    let res = http
        .get(&rules)
        .header("host", "rebind.evil.example")
        .send()
        .await
        .expect("get");
    let p = problem(res, 421).await;
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("allowed_hosts"),
        "{p}"
    );
    // Another site's page cannot make changes.
    let rule = json!({"name": "x", "when": {"text": "x"}, "then": [{"reply": "y"}]});
    for (k, v) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let res = http
            .post(&rules)
            .header(k, v)
            .json(&rule)
            .send()
            .await
            .expect("post");
        let p = problem(res, 403).await;
        assert!(
            p["detail"]
                .as_str()
                .expect("detail")
                .contains("another site"),
            "{p}"
        );
    }
    // The server's own pages can.
    let res = http
        .post(format!("{}/api/v1/rules/validate", s.base))
        .header("origin", s.base.clone())
        .header("sec-fetch-site", "same-origin")
        .json(&rule)
        .send()
        .await
        .expect("post");
    assert!(res.status().is_success(), "{}", res.status());
    let me = json_of(http.get(format!("{}/api/v1/whoami", s.base))).await;
    assert_eq!(me["method"], "unauthenticated");
    s.stop().await;
}

const SERVER: &str = env!("CARGO_BIN_EXE_flowbot-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_open_to_the_network_refuses_to_start_unless_told() {
    let dir = common::TempDir::new("flowbot-open");
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let env = |extra: &[(&str, &str)]| {
        let mut e = vec![
            common::kv("FLOWBOT_SERVER__LISTEN", "0.0.0.0:0"),
            common::kv("FLOWBOT_DATABASE__URL", db.clone()),
        ];
        e.extend(extra.iter().map(|(k, v)| common::kv(k, *v)));
        e
    };
    let log = dir.0.join("refused.log");
    let mut refused = common::spawn(SERVER, &[], &env(&[]), &log);
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), refused.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server started open on 0.0.0.0; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .expect("exit");
    assert_eq!(status.code(), Some(2));
    let err = std::fs::read_to_string(&log).expect("log");
    assert!(
        err.contains("server.listen")
            && err.contains("api_keys = true")
            && err.contains("allow_unauthenticated"),
        "{err}"
    );

    // Told: it starts, and says so loudly.
    let log = dir.0.join("open.log");
    let (mut child, base) = common::spawn_server(
        &[],
        &env(&[("FLOWBOT_AUTH__ALLOW_UNAUTHENTICATED", "true")]),
        &log,
    )
    .await;
    common::wait_ready(&base, &log).await;
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("WITHOUT AUTHENTICATION"), "{said}");
    child.kill().await.expect("kill");

    // With keys: the command line makes one, and only it opens the API.
    let keys_env = env(&[("FLOWBOT_AUTH__API_KEYS", "true")]);
    let out = tokio::process::Command::new(SERVER)
        .args(["keys", "create", "--name", "ops", "--role", "operator"])
        .envs(keys_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let key = stdout
        .lines()
        .find(|l| l.starts_with("fbk_"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    let listed = tokio::process::Command::new(SERVER)
        .args(["keys", "list"])
        .envs(keys_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("keys list");
    let listed = String::from_utf8(listed.stdout).expect("utf-8");
    assert!(
        listed.contains("ops") && listed.contains("operator") && !listed.contains(&key[17..]),
        "{listed}"
    );
    let bad = tokio::process::Command::new(SERVER)
        .args(["keys", "create", "--name", "x", "--role", "wizard"])
        .envs(keys_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("keys create");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no role 'wizard'"));

    let log = dir.0.join("keys.log");
    let (_child, base) = common::spawn_server(&[], &keys_env, &log).await;
    common::wait_ready(&base, &log).await;
    let http = reqwest::Client::new();
    let tasks = format!("{base}/api/v1/tasks");
    assert_eq!(http.get(&tasks).send().await.expect("get").status(), 401);
    assert_eq!(
        http.get(&tasks)
            .bearer_auth(&key)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
}

const JWT_SECRET: &str = "a shared secret of at least thirty-two bytes";

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).expect("key"),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_jwts_map_their_claims_to_roles() {
    let s = start_with(|c| {
        c.auth.jwt = Some(
            toml::from_str(&format!(
                r#"secrets = ["{JWT_SECRET}"]
                issuer = "https://idp.example"
                audience = "flowbot"
                role_claim = "realm_access.roles"
                roles = {{ "bot-admins" = "admin", "bot-readers" = "viewer" }}"#
            ))
            .expect("jwt section"),
        );
    })
    .await;
    let http = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let claims = |roles: Value, exp: i64| {
        json!({"sub": "ada@example.com", "iss": "https://idp.example", "aud": "flowbot",
               "exp": exp, "realm_access": {"roles": roles}})
    };
    let call = |t: String| {
        http.get(format!("{}/api/v1/whoami", s.base))
            .bearer_auth(t)
            .send()
    };
    let me: Value = call(token(&claims(json!(["other", "bot-readers"]), now + 300)))
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (
            me["subject"].as_str(),
            me["role"].as_str(),
            me["method"].as_str()
        ),
        (Some("ada@example.com"), Some("viewer"), Some("jwt"))
    );
    let viewer = token(&claims(json!(["bot-readers"]), now + 300));
    let res = http
        .delete(format!("{}/api/v1/rules/x", s.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("delete");
    problem(res, 403).await;
    let admin = token(&claims(json!("bot-admins"), now + 300));
    let res = http
        .get(format!("{}/api/v1/keys", s.base))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("keys");
    // The admin may, but keys are off on this server.
    problem(res, 409).await;

    // Refused: no role of ours, expired, another issuer, tampered.
    problem(
        call(token(&claims(json!(["nobody"]), now + 300)))
            .await
            .expect("call"),
        403,
    )
    .await;
    let expired = token(&claims(json!(["bot-admins"]), now - 3600));
    let p = problem(call(expired.clone()).await.expect("call"), 401).await;
    assert_eq!(p["detail"], "the token has expired");
    let mut other = claims(json!(["bot-admins"]), now + 300);
    other["iss"] = "https://evil.example".into();
    problem(call(token(&other)).await.expect("call"), 401).await;
    let mut tampered = admin.clone();
    tampered.pop();
    tampered.push(if admin.ends_with('A') { 'B' } else { 'A' });
    let p = problem(call(tampered.clone()).await.expect("call"), 401).await;
    assert!(
        !p.to_string().contains(&tampered),
        "the token is not echoed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_limits_answer_429_and_the_admin_api_keeps_to_its_addresses() {
    let s = start_with(|c| {
        c.auth.api_keys = true;
        c.limits.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.api_per_address_per_minute = 5;
        c.limits.api_per_credential_per_minute = 4;
        c.limits.auth_failures_per_address_per_minute = 2;
        c.limits.public_per_address_per_minute = 2;
        c.limits.admin_allow = vec!["198.51.100.0/24".into(), "127.0.0.1".into()];
    })
    .await;
    let key = cli_key(&s.config, "root", "admin").await;
    let http = reqwest::Client::new();
    let rules = format!("{}/api/v1/rules", s.base);
    let from = |client: &str, k: &str| {
        http.get(&rules)
            .header("x-forwarded-for", format!("203.0.113.77, {client}"))
            .bearer_auth(k.to_owned())
            .send()
    };

    // Outside the admin allow-list: refused whatever the credential.
    let p = problem(from("192.0.2.1", &key).await.expect("get"), 403).await;
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("admin_allow"),
        "{p}"
    );

    // Per address: five requests, then 429 with Retry-After; another address is unaffected.
    for _ in 0..4 {
        assert_eq!(from("198.51.100.1", &key).await.expect("get").status(), 200);
    }
    let res = from("198.51.100.1", "fbk_x").await.expect("get");
    assert_eq!(res.status(), 401);
    let res = from("198.51.100.1", &key).await.expect("get");
    assert!(res.headers().contains_key("retry-after"));
    let p = problem(res, 429).await;
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("this address"),
        "{p}"
    );

    // Per credential: the key spent its four on the address above.
    let res = from("198.51.100.2", &key).await.expect("get");
    let p = problem(res, 429).await;
    assert!(
        p["detail"].as_str().expect("detail").contains("credential"),
        "{p}"
    );

    // Failed authentications: two, then even a good key from that address is not checked.
    let other = cli_key(&s.config, "other", "viewer").await;
    for _ in 0..3 {
        let res = from(
            "198.51.100.3",
            "fbk_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        )
        .await
        .expect("get");
        assert_eq!(res.status(), 401);
    }
    let p = problem(from("198.51.100.3", &other).await.expect("get"), 429).await;
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("failed authentications"),
        "{p}"
    );
    assert_eq!(
        from("198.51.100.4", &other).await.expect("get").status(),
        200
    );

    // The public endpoints, per address.
    let hook = format!("{}/hooks/webhook/open", s.base);
    let post = || {
        http.post(&hook)
            .header("x-forwarded-for", "192.0.2.50")
            .json(&json!({"user": "u", "conversation": "c", "text": "hi"}))
            .send()
    };
    assert_eq!(post().await.expect("post").status(), 202);
    assert_eq!(post().await.expect("post").status(), 202);
    problem(post().await.expect("post"), 429).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_failed_authentications_are_audited() {
    let s = start_with(|c| c.auth.api_keys = true).await;
    let admin = cli_key(&s.config, "root", "admin").await;
    let viewer = cli_key(&s.config, "reader", "viewer").await;
    let http = reqwest::Client::new();
    let api = |p: &str| format!("{}/api/v1{p}", s.base);
    let rule = json!({"name": "greet", "when": {"text": "hi"}, "then": [{"reply": "hello"}]});

    let made = http
        .post(api("/rules"))
        .bearer_auth(&admin)
        .header("x-request-id", "change-1")
        .json(&rule)
        .send()
        .await
        .expect("create");
    assert!(made.status().is_success(), "{}", made.status());
    assert_eq!(made.headers()["x-request-id"], "change-1");
    let denied = http
        .delete(api("/rules/greet"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("delete");
    assert_eq!(denied.status(), 403);
    let denied_id = denied.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let bad = http
        .get(api("/rules"))
        .bearer_auth(
            "fbk_000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 401);
    // Reads are not audited.
    assert_eq!(
        http.get(api("/rules"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );

    let log = json_of(http.get(api("/audit")).bearer_auth(&admin)).await;
    let items = log["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{log}");
    assert_eq!(items[0]["subject"], Value::Null);
    assert_eq!(items[0]["outcome"], 401);
    assert_eq!(items[0]["client"], "127.0.0.1");
    assert_eq!(
        (
            items[1]["subject"].as_str(),
            items[1]["role"].as_str(),
            items[1]["outcome"].as_u64()
        ),
        (Some("reader"), Some("viewer"), Some(403))
    );
    assert_eq!(items[1]["request_id"], denied_id.as_str());
    assert_eq!(items[1]["route"], "/api/v1/rules/{name}");
    assert_eq!(items[1]["path"], "/api/v1/rules/greet");
    assert_eq!(items[1]["resource"], "rules");
    assert_eq!(
        (
            items[2]["subject"].as_str(),
            items[2]["method"].as_str(),
            items[2]["request_id"].as_str()
        ),
        (Some("root"), Some("POST"), Some("change-1"))
    );

    let failures = json_of(
        http.get(api("/audit?outcome=4xx&limit=1"))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(failures["items"].as_array().expect("items").len(), 1);
    let next = failures["next_cursor"].as_str().expect("cursor");
    let rest = json_of(
        http.get(api(&format!("/audit?outcome=4xx&cursor={next}")))
            .bearer_auth(&admin),
    )
    .await;
    assert_eq!(rest["items"][0]["outcome"], 403);
    assert_eq!(rest["items"].as_array().expect("items").len(), 1);

    problem(
        http.get(api("/audit?outcome=teapot"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("audit"),
        400,
    )
    .await;
    problem(
        http.get(api("/audit?cursor=garbage"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("audit"),
        400,
    )
    .await;
    problem(
        http.get(api("/audit"))
            .bearer_auth(&viewer)
            .send()
            .await
            .expect("audit"),
        403,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_connections_are_limited_per_address() {
    let s = start_with(|c| {
        c.limits.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.websockets_per_address = 2;
    })
    .await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let open = |client: &'static str| {
        let mut req = format!("{}/ws/chat", s.ws)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().expect("header"));
        tokio_tungstenite::connect_async(req)
    };
    let first = open("192.0.2.10").await.expect("first");
    let _second = open("192.0.2.10").await.expect("second");
    match open("192.0.2.10").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 429),
        other => panic!("a third socket from one address: {:?}", other.map(|_| ())),
    }
    let _other = open("192.0.2.11").await.expect("another address");
    // A closed socket frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while open("192.0.2.10").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place freed in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.stop().await;
}
