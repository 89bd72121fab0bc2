//! The server's own addresses: the admin API on an address of its own, and HTTPS with a
//! certificate read again when its files change.

mod common;
mod harness;

use std::time::Duration;

use harness::{problem, start_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_can_have_an_address_of_its_own() {
    let s =
        start_with(|c| c.server.admin_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let admin = s.admin.clone().expect("the admin address");
    let http = reqwest::Client::new();
    // The public address: webhooks, health and the API's description, not the API.
    for path in ["/api/v1/rules", "/metrics", "/api/v1/keys"] {
        let p = problem(
            http.get(format!("{}{path}", s.base))
                .send()
                .await
                .expect("get"),
            404,
        )
        .await;
        assert!(
            p["detail"].as_str().expect("detail").contains("its own"),
            "{p}"
        );
    }
    for path in ["/healthz", "/api/v1/openapi.json", "/chat"] {
        let res = http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{path}");
    }
    let res = http
        .post(format!("{}/hooks/webhook/open", s.base))
        .json(&json!({"user": "u", "conversation": "c", "text": "hi"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 202);
    // The admin address serves the API.
    for path in ["/api/v1/rules", "/metrics"] {
        let res = http
            .get(format!("{admin}{path}"))
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "{path}");
    }
    s.stop().await;
}

#[test]
fn only_the_admin_address_needs_authentication() {
    use flowbot_server::config::Config;
    let load = |listen: &str, admin: &str| {
        Config::load(
            None,
            [
                ("FLOWBOT_SERVER__LISTEN".to_owned(), listen.to_owned()),
                ("FLOWBOT_SERVER__ADMIN_LISTEN".to_owned(), admin.to_owned()),
            ],
        )
    };
    // Webhooks on every interface, the API on loopback: no credential needed.
    load("0.0.0.0:8080", "127.0.0.1:9090").expect("an open API on loopback only");
    let e = load("127.0.0.1:8080", "0.0.0.0:9090").expect_err("an open API on the network");
    assert_eq!(e.path, "server.admin_listen");
    let e = load("127.0.0.1:8080", "127.0.0.1:8080").expect_err("one address twice");
    assert_eq!(e.path, "server.admin_listen");
}

struct Cert {
    pem: String,
}

fn write_cert(dir: &std::path::Path) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let pem = made.cert.pem();
    // Key first: the server reloads once both files changed.
    std::fs::write(dir.join("key.tmp"), made.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.join("cert.tmp"), &pem).expect("cert");
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).expect("rename");
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).expect("rename");
    Cert { pem }
}

fn trusting(cert: &Cert) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem.as_bytes()).expect("pem")])
        .resolve("localhost", "127.0.0.1:0".parse().expect("addr"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_renewed_in_place() {
    let dir = common::TempDir::new("flowbot-tls");
    let first = write_cert(&dir.0);
    let files = dir.0.clone();
    let s = start_with(move |c| {
        c.server.tls = Some(
            toml::from_str(&format!(
                "cert_file = {:?}\nkey_file = {:?}\nreload_secs = 1",
                files.join("cert.pem"),
                files.join("key.pem")
            ))
            .expect("tls section"),
        );
    })
    .await;
    let port = s.base.rsplit(':').next().expect("port").to_owned();
    let url = format!("https://localhost:{port}/healthz");
    let res = trusting(&first).get(&url).send().await.expect("https");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err()
    );

    // A renewed certificate is served once the files change, without a restart.
    let second = write_cert(&dir.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if trusting(&second).get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        trusting(&first).get(&url).send().await.is_err(),
        "the old one is gone"
    );
    s.stop().await;
}
