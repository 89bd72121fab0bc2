//! Notifiers against a local server on 127.0.0.1 that speaks each service's wire format
//! (ntfy, Slack incoming webhooks, Pushover, a signed JSON webhook, SMTP), refusals included;
//! and e-mail to aiosmtpd, a real SMTP server, over STARTTLS and TLS.
#![cfg(all(feature = "notifiers", feature = "web", feature = "webhook"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use flowbot_channels::notifiers::{
    Email, EmailSettings, JsonWebhook, Ntfy, Pushover, SlackWebhook, SmtpTls,
};
use flowbot_core::{Notification, Notifier, Priority};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the fake services received: (route, headers, body).
type Seen = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

async fn ntfy(
    State(seen): State<Seen>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    if topic == "locked"
        && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tk_good")
    {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"code": 40301, "http": 403, "error": "forbidden"})),
        )
            .into_response();
    }
    seen.lock()
        .unwrap()
        .push((format!("ntfy/{topic}"), headers, body));
    axum::Json(json!({"id": "msg123", "event": "message", "topic": topic})).into_response()
}

async fn slack(
    State(seen): State<Seen>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    match hook.as_str() {
        "gone" => (StatusCode::NOT_FOUND, "no_service").into_response(),
        "busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            "rate_limited",
        )
            .into_response(),
        _ => {
            seen.lock()
                .unwrap()
                .push((format!("slack/{hook}"), headers, body));
            "ok".into_response()
        }
    }
}

/// `application/x-www-form-urlencoded`, decoded.
fn form_of(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

async fn pushover(State(seen): State<Seen>, headers: HeaderMap, body: String) -> impl IntoResponse {
    let form = form_of(&body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("token").as_deref() != Some("app_token") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"token": "invalid", "errors": ["application token is invalid"], "status": 0, "request": "r0"})),
        )
            .into_response();
    }
    seen.lock().unwrap().push((
        "pushover".into(),
        headers,
        serde_json::to_string(&form).unwrap(),
    ));
    axum::Json(json!({"status": 1, "request": "req-1"})).into_response()
}

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    seen.lock().unwrap().push((
        "hook".into(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    StatusCode::NO_CONTENT
}

async fn server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/ntfy/{topic}", post(ntfy))
        .route("/slack/{hook}", post(slack))
        .route("/1/messages.json", post(pushover))
        .route("/hook", post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn note(priority: Priority) -> Notification {
    Notification {
        message: "disk almost full".into(),
        title: Some("db-1".into()),
        priority,
        url: Some("https://status.example.com".into()),
        tags: vec!["warning".into(), "disk".into()],
    }
}

#[tokio::test]
async fn ntfy_gets_headers_and_body_and_refusals_are_named() {
    let (base, seen) = server().await;
    let out = Ntfy::new(&format!("{base}/ntfy/"), "alerts", None)
        .notify(&note(Priority::High))
        .await
        .unwrap();
    assert_eq!(out, json!({"id": "msg123"}));
    let (route, headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(route, "ntfy/alerts");
    assert_eq!(body, "disk almost full");
    let h = |k: &str| headers.get(k).unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        (h("title"), h("priority"), h("tags"), h("click")),
        (
            "db-1".into(),
            "4".into(),
            "warning,disk".into(),
            "https://status.example.com".into()
        )
    );
    let e = Ntfy::new(&format!("{base}/ntfy"), "locked", Some("tk_bad".into()))
        .notify(&note(Priority::Low))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 403") && e.contains("forbidden"), "{e}");
    Ntfy::new(&format!("{base}/ntfy"), "locked", Some("tk_good".into()))
        .notify(&note(Priority::Low))
        .await
        .unwrap();
}

#[tokio::test]
async fn slack_webhooks_post_mrkdwn_and_report_slack_errors() {
    let (base, seen) = server().await;
    SlackWebhook::new(&format!("{base}/slack/T1"))
        .notify(&note(Priority::Urgent))
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&seen.lock().unwrap()[0].2).unwrap();
    assert_eq!(
        body["text"],
        ":rotating_light: *db-1*\ndisk almost full\n<https://status.example.com>"
    );
    let e = SlackWebhook::new(&format!("{base}/slack/gone"))
        .notify(&note(Priority::Normal))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 404") && e.contains("no_service"), "{e}");
    let e = SlackWebhook::new(&format!("{base}/slack/busy"))
        .notify(&note(Priority::Normal))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HTTP 429") && e.contains("retry after 30 s"),
        "{e}"
    );
    let e = SlackWebhook::new("http://127.0.0.1:1/closed")
        .notify(&note(Priority::Normal))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Slack unreachable"), "{e}");
}

#[tokio::test]
async fn pushover_sends_its_form_and_keeps_the_token_out_of_errors() {
    let (base, seen) = server().await;
    let out = Pushover::new(&base, "app_token", "user_key")
        .notify(&note(Priority::Urgent))
        .await
        .unwrap();
    assert_eq!(out["request"], "req-1");
    let form: Vec<(String, String)> = serde_json::from_str(&seen.lock().unwrap()[0].2).unwrap();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("user"), Some("user_key"));
    assert_eq!(get("message"), Some("disk almost full"));
    assert_eq!(get("priority"), Some("2"));
    assert_eq!((get("retry"), get("expire")), (Some("60"), Some("3600")));
    let e = Pushover::new(&base, "wrong_token_value", "user_key")
        .notify(&note(Priority::Normal))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("application token is invalid"), "{e}");
    assert!(!e.contains("wrong_token_value"), "{e}");
}

#[tokio::test]
async fn json_webhooks_are_signed() {
    let (base, seen) = server().await;
    JsonWebhook::new(&format!("{base}/hook"), Some("hook-secret".into()))
        .notify(&note(Priority::Normal))
        .await
        .unwrap();
    let (_, headers, body) = seen.lock().unwrap()[0].clone();
    let sig = headers
        .get(flowbot_channels::webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    flowbot_channels::webhook::verify(
        "hook-secret",
        sig,
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["message"], "disk almost full");
    assert_eq!(v["priority"], "normal");
}

/// A small SMTP server (RFC 5321: greeting, EHLO, MAIL, RCPT, DATA, QUIT) that keeps each
/// message's data and refuses the recipient `refused@example.com` with 550.
async fn smtp_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let kept = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test.local ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") {
                        b"250-test.local\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("MAIL FROM") {
                        b"250 2.1.0 OK\r\n"
                    } else if upper.starts_with("RCPT TO") {
                        if line.contains("refused@example.com") {
                            b"550 5.1.1 mailbox unavailable\r\n"
                        } else {
                            b"250 2.1.5 OK\r\n"
                        }
                    } else if upper == "DATA" {
                        write.write_all(b"354 end with .\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        kept.lock().unwrap().push(data);
                        b"250 2.0.0 queued as 42\r\n"
                    } else if upper == "QUIT" {
                        write.write_all(b"221 2.0.0 bye\r\n").await.unwrap();
                        break;
                    } else {
                        b"250 OK\r\n"
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test]
async fn email_goes_out_over_smtp_and_refusals_name_the_code() {
    let (port, mails) = smtp_server().await;
    let settings = |to: &str| EmailSettings {
        host: "127.0.0.1".into(),
        port: Some(port),
        tls: SmtpTls::None,
        from: "FlowBot <bot@example.com>".into(),
        to: vec![to.into()],
        ..EmailSettings::default()
    };
    let out = Email::new(&settings("ops@example.com"))
        .unwrap()
        .notify(&note(Priority::Urgent))
        .await
        .unwrap();
    assert_eq!(out["code"], "250");
    let mail = mails.lock().unwrap()[0].clone();
    assert!(mail.contains("Subject: db-1"), "{mail}");
    assert!(mail.contains("From: FlowBot <bot@example.com>"), "{mail}");
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(mail.contains("Importance: high"), "{mail}");
    assert!(mail.contains("disk almost full"), "{mail}");
    let e = Email::new(&settings("refused@example.com"))
        .unwrap()
        .notify(&note(Priority::Normal))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused the e-mail (550)"), "{e}");
    // Bad settings are refused when the notifier is made.
    let mut bad = settings("ops@example.com");
    bad.from = "not an address".into();
    assert!(Email::new(&bad).unwrap_err().0.starts_with("from:"));
    bad = settings("ops@example.com");
    bad.username = Some("u".into());
    assert!(Email::new(&bad).unwrap_err().0.contains("both or neither"));
    // Nobody listening: a clear error.
    let mut gone = settings("ops@example.com");
    gone.port = Some(1);
    let e = Email::new(&gone)
        .unwrap()
        .notify(&note(Priority::Low))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SMTP"), "{e}");
}

/// The Python with aiosmtpd that `scripts/test` installs into `.venv` (or
/// `FLOWBOT_TEST_PYTHON`). Required with CI=true; otherwise a missing one skips, loudly.
fn python_with_aiosmtpd() -> Option<std::path::PathBuf> {
    let python = std::env::var_os("FLOWBOT_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
        });
    let found = std::process::Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(python);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "CI=true but {} has no aiosmtpd: run ./scripts/test, which installs it",
        python.display()
    );
    #[allow(clippy::print_stderr)] // the skip must be seen
    {
        eprintln!(
            "SKIPPED: aiosmtpd test ({} has no aiosmtpd; ./scripts/test installs it)",
            python.display()
        );
    }
    None
}

/// aiosmtpd serving on 127.0.0.1, storing what it receives in a maildir; killed on drop.
struct Aiosmtpd {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Aiosmtpd {
    /// `tls`: the certificate and key as `--tlscert/--tlskey` (STARTTLS, required) or
    /// `--smtpscert/--smtpskey` (TLS from the first byte).
    async fn start(python: &std::path::Path, dir: &std::path::Path, tls: [&str; 2]) -> Aiosmtpd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = dir.join(format!("mail-{port}"));
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let child = std::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg(tls[0])
            .arg(&cert)
            .arg(tls[1])
            .arg(&key)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Aiosmtpd {
            child,
            port,
            maildir,
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server
    }

    /// The messages delivered so far.
    fn mails(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_and_tls_to_aiosmtpd() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("flowbot-smtp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // A certificate for "localhost", signed by itself: trusted only through ca_file.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let settings = |port: u16, tls: SmtpTls, ca: bool| EmailSettings {
        host: "localhost".into(),
        port: Some(port),
        tls,
        from: "FlowBot <bot@example.com>".into(),
        to: vec!["ops@example.com".into()],
        ca_file: ca.then(|| dir.join("cert.pem")),
        ..EmailSettings::default()
    };
    let send = |s: EmailSettings| async move {
        Email::new(&s)
            .unwrap()
            .notify(&note(Priority::High))
            .await
            .map_err(|e| e.to_string())
    };

    // STARTTLS (required by the server), trusting the relay's CA.
    let starttls = Aiosmtpd::start(&python, &dir, ["--tlscert", "--tlskey"]).await;
    let out = send(settings(starttls.port, SmtpTls::Starttls, true))
        .await
        .unwrap();
    assert_eq!(out["code"], "250");
    let mails = starttls.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("Subject: db-1"), "{}", mails[0]);
    assert!(mails[0].contains("Importance: high"), "{}", mails[0]);
    assert!(mails[0].contains("disk almost full"), "{}", mails[0]);

    // Without the CA the certificate is not trusted: a clear error, nothing delivered.
    let e = send(settings(starttls.port, SmtpTls::Starttls, false))
        .await
        .unwrap_err();
    assert!(e.starts_with("SMTP:") && e.contains("certificate"), "{e}");
    // Plain SMTP to a server that requires STARTTLS: refused, with its code.
    let e = send(settings(starttls.port, SmtpTls::None, false))
        .await
        .unwrap_err();
    assert!(e.contains("refused the e-mail (530)"), "{e}");
    assert_eq!(starttls.mails().len(), 1);

    // TLS from the first byte (SMTPS).
    let smtps = Aiosmtpd::start(&python, &dir, ["--smtpscert", "--smtpskey"]).await;
    let out = send(settings(smtps.port, SmtpTls::Tls, true))
        .await
        .unwrap();
    assert_eq!(out["code"], "250");
    assert_eq!(smtps.mails().len(), 1);

    // A CA file that is not there, or not PEM, is named when the notifier is made.
    let mut bad = settings(smtps.port, SmtpTls::Tls, false);
    bad.ca_file = Some(dir.join("missing.pem"));
    assert!(Email::new(&bad).unwrap_err().0.starts_with("ca_file: "));
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    bad.ca_file = Some(dir.join("junk.pem"));
    assert!(Email::new(&bad).unwrap_err().0.starts_with("ca_file: "));
    drop((starttls, smtps));
    let _ = std::fs::remove_dir_all(&dir);
}
