//! OpenID Connect sign-in against a real provider: oidc-provider (npm; a certified
//! implementation) run by node from `bins/tests/oidc`, where `scripts/test` installs it.
//! A cookie-keeping client walks the flow as a browser does: `/auth/login` → the provider's
//! login form → `/auth/callback` → the session cookie on the admin API, with the CSRF token
//! on changes → sign-out. Also: a tampered `state`, a replayed callback, a role claim that
//! names no role, sign-in attempt limits, an unreachable provider.

mod common;
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowbot_server::config::OidcConfig;
use harness::{Server, problem, start_on};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const CLIENT_SECRET: &str = "flowbot-test-client-secret";

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Whether node and the provider's npm packages are here. Required with CI=true; otherwise
/// their absence skips, loudly.
fn node_ready() -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let installed = provider_dir()
        .join("node_modules/oidc-provider/package.json")
        .is_file();
    if node && installed {
        return true;
    }
    let what = if node {
        "the npm packages of bins/tests/oidc are not installed (npm ci --prefix bins/tests/oidc)"
    } else {
        "node is not on PATH"
    };
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "CI=true but {what}: run ./scripts/test, which installs them"
    );
    #[allow(clippy::print_stderr)] // the skip must be seen
    {
        eprintln!("SKIPPED: OpenID Connect sign-in test ({what}; ./scripts/test installs them)");
    }
    false
}

/// oidc-provider on 127.0.0.1, ended with the test (its stdin closes, and it is killed).
struct Provider {
    issuer: String,
    _child: tokio::process::Child,
    _stdin: tokio::process::ChildStdin,
}

impl Provider {
    async fn start(redirect_uri: &str) -> Provider {
        let mut child = tokio::process::Command::new("node")
            .arg("provider.mjs")
            .arg(redirect_uri)
            .current_dir(provider_dir())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start node provider.mjs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the provider starts in time")
            .expect("read the provider's output")
            .expect("the provider says it is ready");
        let port = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("'ready <port>' from the provider, got '{line}'"))
            .to_owned();
        // Whatever else it says goes to the test's output (its pipe stays open).
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                #[allow(clippy::print_stderr)] // the provider's own words, for a failing test
                {
                    eprintln!("provider: {line}");
                }
            }
        });
        Provider {
            issuer: format!("http://127.0.0.1:{port}"),
            _child: child,
            _stdin: stdin,
        }
    }
}

fn oidc_config(issuer: &str, redirect_url: &str) -> OidcConfig {
    OidcConfig {
        issuer: issuer.to_owned(),
        client_id: "flowbot".into(),
        client_secret: Some(CLIENT_SECRET.into()),
        redirect_url: redirect_url.to_owned(),
        scopes: vec!["email".into(), "profile".into(), "flowbot".into()],
        subject_claim: "email".into(),
        role_claim: "role".into(),
        roles: BTreeMap::from([
            ("flowbot-admins".into(), "admin".into()),
            ("flowbot-editors".into(), "editor".into()),
        ]),
        session_secs: 3600,
        attempts_per_address_per_minute: 5,
    }
}

/// A listener on a loopback port the system picks.
async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// The provider, and the server signing people in through it (the server's own port is
/// known beforehand: the provider must know the redirect URI when it starts).
async fn provider_and_server() -> Option<(Provider, Server)> {
    if !node_ready() {
        return None;
    }
    let listener = loopback().await;
    let port = listener.local_addr().expect("addr").port();
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    let provider = Provider::start(&redirect).await;
    let config = oidc_config(&provider.issuer, &redirect);
    let server = start_on(Some(listener), move |c| {
        c.auth.oidc = Some(config);
        // Requests may say which address they come from, to exercise the limits.
        c.limits.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.auth_failures_per_address_per_minute = 3;
    })
    .await;
    Some((provider, server))
}

/// A browser: keeps cookies, follows no redirects by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Where a redirect points, as an absolute URL.
fn location(res: &reqwest::Response) -> String {
    let to = res
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("a redirect from {}, got {}", res.url(), res.status()))
        .to_str()
        .expect("location");
    res.url().join(to).expect("a URL").to_string()
}

/// The `Set-Cookie` of `name`, whole.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn query_of(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .expect("URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Sign `who` in at the provider, up to the provider's redirect back to the server; that
/// callback URL, not yet followed.
async fn to_callback(http: &reqwest::Client, s: &Server, who: &str) -> String {
    let res = http
        .get(format!("{}/auth/login?return_to=/api/v1/whoami", s.base))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), 303);
    let login_cookie = set_cookie(&res, "flowbot_login").expect("the sign-in's cookie");
    assert!(
        login_cookie.contains("HttpOnly")
            && login_cookie.contains("SameSite=Lax")
            && login_cookie.contains("Path=/auth/callback"),
        "{login_cookie}"
    );
    let mut url = location(&res);
    let q = query_of(&url);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "flowbot");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["code_challenge"].len() >= 43, "{q:?}");
    assert!(!q["state"].is_empty() && !q["nonce"].is_empty(), "{q:?}");
    assert_eq!(q["scope"], "openid email profile flowbot");
    assert_eq!(q["redirect_uri"], format!("{}/auth/callback", s.base));
    // The provider's redirects, to its login form.
    loop {
        let res = http.get(&url).send().await.expect("provider");
        match res.status().as_u16() {
            200 => break,
            302 | 303 => url = location(&res),
            other => panic!("{url}: {other} {}", res.text().await.unwrap_or_default()),
        }
    }
    let res = http
        .post(format!("{url}/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("login={who}"))
        .send()
        .await
        .expect("sign in at the provider");
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    let mut url = location(&res);
    while !url.starts_with(&format!("{}/auth/callback", s.base)) {
        let res = http.get(&url).send().await.expect("provider");
        assert!(
            res.status().is_redirection(),
            "{url}: {}: {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
        url = location(&res);
    }
    url
}

/// `url` with its `state` changed.
fn tampered(url: &str) -> String {
    let mut u = url::Url::parse(url).expect("URL");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// The session's CSRF token, from `/auth/session`.
async fn csrf_token(http: &reqwest::Client, s: &Server) -> String {
    let res = http
        .get(format!("{}/auth/session", s.base))
        .send()
        .await
        .expect("session");
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("json");
    v["csrf_token"].as_str().expect("csrf_token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_works_with_the_cookie_and_the_csrf_token_and_signs_out() {
    let Some((_provider, s)) = provider_and_server().await else {
        return;
    };
    let http = browser();
    let whoami = format!("{}/api/v1/whoami", s.base);

    // Nobody signed in yet: a credential is required.
    problem(http.get(&whoami).send().await.expect("send"), 401).await;
    problem(
        http.get(format!("{}/auth/session", s.base))
            .send()
            .await
            .expect("send"),
        401,
    )
    .await;

    let callback = to_callback(&http, &s, "alice").await;

    // A state other than the one this browser's sign-in sent is refused.
    let v = problem(
        http.get(tampered(&callback)).send().await.expect("send"),
        400,
    )
    .await;
    assert!(
        v["detail"].as_str().expect("detail").contains("state"),
        "{v}"
    );
    // So is a callback without the sign-in's cookie (another browser).
    let v = problem(browser().get(&callback).send().await.expect("send"), 400).await;
    assert!(
        v["detail"].as_str().expect("detail").contains("cookie"),
        "{v}"
    );

    // The real one signs in: a session cookie, and on to return_to.
    let res = http.get(&callback).send().await.expect("callback");
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), whoami);
    let cookie = set_cookie(&res, "flowbot_session").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=3600"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let session_id = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("value");
    assert_eq!(session_id.len(), 64);

    // The callback works once: the browser's sign-in cookie is gone, and the sign-in too.
    let v = problem(http.get(&callback).send().await.expect("send"), 400).await;
    assert!(
        v["detail"].as_str().expect("detail").contains("cookie"),
        "{v}"
    );
    let state = query_of(&callback)["state"].clone();
    let replay = reqwest::Client::new()
        .get(&callback)
        .header(COOKIE, format!("flowbot_login={state}"))
        .send()
        .await
        .expect("send");
    let v = problem(replay, 400).await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("already used"),
        "{v}"
    );

    let res = http.get(&whoami).send().await.expect("whoami");
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.expect("json");
    assert_eq!(me["subject"], "alice@example.com");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["method"], "session");

    let res = http
        .get(format!("{}/auth/session", s.base))
        .send()
        .await
        .expect("session");
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.expect("json");
    assert_eq!(info["subject"], "alice@example.com");
    assert_eq!(info["name"], "Alice");
    assert_eq!(info["role"], "admin");
    let token = info["csrf_token"].as_str().expect("csrf_token").to_owned();
    assert_eq!(token.len(), 64);
    // The store keys the session by a hash: the database never holds the cookie's value.
    let store = flowbot_server::run::open_store(&s.config)
        .await
        .expect("the server's store");
    let stored = store.kv_list("auth.sessions").await.expect("sessions");
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].0, session_id);
    assert!(!stored[0].1.to_string().contains(&session_id));
    assert_eq!(stored[0].1["subject"], "alice@example.com");

    // A change made with the cookie needs the CSRF token.
    let schedule = json!({"name": "nightly", "cron": "0 3 * * *", "kind": "noop"});
    let schedules = format!("{}/api/v1/schedules", s.base);
    let v = problem(
        http.post(&schedules)
            .json(&schedule)
            .send()
            .await
            .expect("send"),
        403,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("X-CSRF-Token"),
        "{v}"
    );
    problem(
        http.post(&schedules)
            .header("x-csrf-token", "0".repeat(64))
            .json(&schedule)
            .send()
            .await
            .expect("send"),
        403,
    )
    .await;
    let res = http
        .post(&schedules)
        .header("x-csrf-token", &token)
        .json(&schedule)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    // The change is the person's in the audit log.
    let res = http
        .get(format!(
            "{}/api/v1/audit?subject=alice@example.com&route=/api/v1/schedules",
            s.base
        ))
        .send()
        .await
        .expect("audit");
    assert_eq!(res.status(), 200);
    let audit: Value = res.json().await.expect("json");
    let outcomes: Vec<u64> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["outcome"].as_u64().expect("outcome"))
        .collect();
    assert!(outcomes.contains(&201), "{audit}");

    // Signing out needs the token too, then ends the session everywhere.
    problem(
        http.post(format!("{}/auth/logout", s.base))
            .send()
            .await
            .expect("send"),
        403,
    )
    .await;
    let res = http
        .post(format!("{}/auth/logout", s.base))
        .header("x-csrf-token", &token)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 200);
    let gone = set_cookie(&res, "flowbot_session").expect("the cookie is removed");
    assert!(gone.contains("Max-Age=0"), "{gone}");
    problem(http.get(&whoami).send().await.expect("send"), 401).await;
    // The old cookie, kept by someone, is worth nothing now.
    let v = problem(
        reqwest::Client::new()
            .get(&whoami)
            .header(COOKIE, format!("flowbot_session={session_id}"))
            .send()
            .await
            .expect("send"),
        401,
    )
    .await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("session has ended"),
        "{v}"
    );
    // A cookie this server never made, likewise.
    problem(
        reqwest::Client::new()
            .get(&whoami)
            .header(COOKIE, "flowbot_session=forged")
            .send()
            .await
            .expect("send"),
        401,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_claim_decides_and_a_claim_naming_no_role_is_refused() {
    let Some((_provider, s)) = provider_and_server().await else {
        return;
    };
    let whoami = format!("{}/api/v1/whoami", s.base);

    // mallory's role claim names no role of this server: no session.
    let http = browser();
    let callback = to_callback(&http, &s, "mallory").await;
    let res = http.get(&callback).send().await.expect("callback");
    assert!(set_cookie(&res, "flowbot_session").is_none());
    let v = problem(res, 403).await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("'role' claim"),
        "{v}"
    );
    problem(http.get(&whoami).send().await.expect("send"), 401).await;

    // bob's names the editors: an editor may change rules, not keys.
    let http = browser();
    let callback = to_callback(&http, &s, "bob").await;
    let res = http.get(&callback).send().await.expect("callback");
    assert_eq!(res.status(), 303);
    let me: Value = http
        .get(&whoami)
        .send()
        .await
        .expect("whoami")
        .json()
        .await
        .expect("json");
    assert_eq!(me["subject"], "bob@example.com");
    assert_eq!(me["role"], "editor");
    let token = csrf_token(&http, &s).await;
    let v = problem(
        http.post(format!("{}/api/v1/keys", s.base))
            .header("x-csrf-token", &token)
            .json(&json!({"name": "k", "role": "admin"}))
            .send()
            .await
            .expect("send"),
        403,
    )
    .await;
    assert!(
        v["detail"].as_str().expect("detail").contains("keys:write"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_and_failed_callbacks_are_limited_per_address() {
    let Some((_provider, s)) = provider_and_server().await else {
        return;
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = |from: &'static str| {
        http.get(format!("{}/auth/login", s.base))
            .header("x-forwarded-for", from)
            .send()
    };
    // Five sign-ins a minute from one address; the sixth waits.
    for _ in 0..5 {
        assert_eq!(login("192.0.2.7").await.expect("send").status(), 303);
    }
    let res = login("192.0.2.7").await.expect("send");
    assert!(res.headers().contains_key(RETRY_AFTER));
    let v = problem(res, 429).await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("sign-in attempts"),
        "{v}"
    );
    // Another address is not held up.
    assert_eq!(login("192.0.2.70").await.expect("send").status(), 303);

    // Refused callbacks are failed authentications: three a minute, then the address waits.
    let callback = format!("{}/auth/callback?code=x&state=y", s.base);
    for _ in 0..4 {
        let res = http
            .get(&callback)
            .header("x-forwarded-for", "192.0.2.8")
            .send()
            .await
            .expect("send");
        problem(res, 400).await;
    }
    let res = http
        .get(&callback)
        .header("x-forwarded-for", "192.0.2.8")
        .send()
        .await
        .expect("send");
    let v = problem(res, 429).await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("failed authentications"),
        "{v}"
    );
    // The provider's refusal is shown, not followed.
    let res = http
        .get(format!(
            "{}/auth/callback?error=access_denied&error_description=nope",
            s.base
        ))
        .send()
        .await
        .expect("send");
    let v = problem(res, 403).await;
    assert!(
        v["detail"]
            .as_str()
            .expect("detail")
            .contains("access_denied (nope)"),
        "{v}"
    );
    // Bad input gets a clear 400.
    let res = http
        .get(format!(
            "{}/auth/login?return_to=https://evil.example/",
            s.base
        ))
        .send()
        .await
        .expect("send");
    let v = problem(res, 400).await;
    assert!(
        v["detail"].as_str().expect("detail").contains("return_to"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_a_clear_503() {
    let listener = loopback().await;
    let port = listener.local_addr().expect("addr").port();
    let config = oidc_config(
        &format!("http://{}", common::REFUSED),
        &format!("http://127.0.0.1:{port}/auth/callback"),
    );
    let s = start_on(Some(listener), move |c| {
        c.auth.oidc = Some(config);
    })
    .await;
    let v = problem(
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .get(format!("{}/auth/login", s.base))
            .send()
            .await
            .expect("send"),
        503,
    )
    .await;
    let detail = v["detail"].as_str().expect("detail");
    assert!(detail.contains("identity provider"), "{detail}");
    assert!(!detail.contains(CLIENT_SECRET), "{detail}");
    // The sign-in routes are in the OpenAPI document.
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", s.base))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    for (path, method) in [
        ("/auth/login", "get"),
        ("/auth/callback", "get"),
        ("/auth/session", "get"),
        ("/auth/logout", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    // The API wants a credential, and says so.
    problem(
        reqwest::get(format!("{}/api/v1/whoami", s.base))
            .await
            .expect("send"),
        401,
    )
    .await;
    s.stop().await;
}
