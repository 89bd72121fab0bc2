//! Web chat identity: a visitor is who their server-issued token says; ids chosen in the URL
//! get a new identity, never another visitor's conversation; a site embedding the chat can
//! sign its users in with its own JWT, and they keep their history on every device.

mod common;
mod harness;

use std::time::Duration;

use flowbot_server::config::HostIdentitySettings;
use futures_util::StreamExt;
use harness::{Chat, Server, next_frame, start, start_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

const HOST_SECRET: &str = "shop-signing-secret-0123456789abcdef";
const ISSUER: &str = "https://shop.example";
const AUDIENCE: &str = "flowbot-chat";

/// Connect to `url`; the welcome frame and the history's texts.
async fn open(url: &str) -> (Chat, Value, Vec<String>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let welcome = next_frame(&mut ws, "welcome").await;
    let history = next_frame(&mut ws, "history").await;
    let texts = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_owned())
        .collect();
    (ws, welcome, texts)
}

async fn say(ws: &mut Chat, text: &str) -> Value {
    harness::say(ws, text).await
}

fn ws_url(s: &Server, query: &str) -> String {
    format!("{}/ws/chat{query}", s.ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_with_a_guessed_id_gets_nothing() {
    let s = start().await;
    // A visitor arrives: new ids and a token.
    let (mut victim, welcome, history) = open(&ws_url(&s, "")).await;
    assert!(history.is_empty());
    assert_eq!(welcome["identity"], "visitor");
    assert!(welcome.get("refused").is_none(), "{welcome}");
    let user = welcome["user"].as_str().expect("user").to_owned();
    let conversation = welcome["conversation"].as_str().expect("conv").to_owned();
    let token = welcome["token"].as_str().expect("token").to_owned();
    assert_eq!(
        say(&mut victim, "/echo my secret plans").await["text"],
        "my secret plans"
    );

    // Another client knows (or guesses) both ids, but has no token for them.
    let (mut intruder, other, history) = open(&ws_url(
        &s,
        &format!("?user={user}&conversation={conversation}"),
    ))
    .await;
    assert!(
        history.is_empty(),
        "the victim's history leaked: {history:?}"
    );
    assert_ne!(other["user"], user.as_str());
    assert_ne!(other["conversation"], conversation.as_str());
    assert!(
        other["refused"]
            .as_str()
            .expect("refused says why")
            .contains("no chat token"),
        "{other}"
    );
    // Its messages land in its own new conversation, never the victim's.
    let answer = say(&mut intruder, "/echo let me in").await;
    assert_eq!(answer["conversation"], other["conversation"]);
    assert_eq!(
        say(&mut victim, "/echo still alone").await["text"],
        "still alone"
    );

    // Its own token cannot be bent to the victim's ids, nor can the victim's be edited.
    let own = other["token"].as_str().expect("token");
    let (_, bent, history) = open(&ws_url(
        &s,
        &format!("?user={user}&conversation={conversation}&token={own}"),
    ))
    .await;
    assert!(history.is_empty());
    assert!(
        bent["refused"]
            .as_str()
            .expect("refused")
            .contains("another user")
    );
    let forged = token.replacen(&conversation, other["conversation"].as_str().expect("c"), 1);
    let (_, f, history) = open(&ws_url(&s, &format!("?token={forged}"))).await;
    assert!(history.is_empty());
    assert!(
        f["refused"]
            .as_str()
            .expect("refused")
            .contains("not valid"),
        "{f}"
    );
    drop(intruder);

    // The victim's token resumes the conversation, which holds only the victim's messages.
    let (_, again, history) = open(&ws_url(&s, &format!("?token={token}"))).await;
    assert_eq!(
        (again["user"].as_str(), again["conversation"].as_str()),
        (Some(user.as_str()), Some(conversation.as_str()))
    );
    assert!(again.get("refused").is_none());
    assert!(again["token"].is_string(), "a newly issued token: {again}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut history = history;
    // The last answer enters the history once delivered; reconnect until it is there.
    while history.len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "{history:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        history = open(&ws_url(&s, &format!("?token={token}"))).await.2;
    }
    assert_eq!(
        history,
        [
            "/echo my secret plans",
            "my secret plans",
            "/echo still alone",
            "still alone"
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_expired_tokens_get_a_new_identity() {
    let s = start_with(|c| c.web.token_max_age_secs = 3600).await;
    let mut chat = harness::chat(&s, "ada", "kept").await;
    say(&mut chat, "/echo remember me").await;
    let now = chrono::Utc::now().timestamp();
    let sign = |secret: &str, at: i64| {
        flowbot_channels::web::sign_token(secret.as_bytes(), "web", "ada", "kept", at)
    };
    let cases = [
        (sign(harness::WEB_SECRET, now - 7200), "expired"),
        (
            sign("another-secret-0123456789abcdef-0123", now),
            "not valid",
        ),
        (sign(harness::WEB_SECRET, now + 86_400), "future"),
        ("v1~ada~kept~1~zz".to_owned(), "malformed"),
    ];
    for (token, why) in cases {
        let (_, welcome, history) = open(&ws_url(&s, &format!("?token={token}"))).await;
        assert!(history.is_empty(), "{why}: {history:?}");
        assert_ne!(welcome["user"], "ada");
        assert!(
            welcome["refused"].as_str().expect("refused").contains(why),
            "{why}: {welcome}"
        );
    }
    // Within the max age, the same visitor is back.
    let (_, welcome, history) = open(&ws_url(
        &s,
        &format!("?token={}", sign(harness::WEB_SECRET, now - 60)),
    ))
    .await;
    assert_eq!(welcome["user"], "ada");
    assert_eq!(history[0], "/echo remember me");
    s.stop().await;
}

fn host_identity() -> HostIdentitySettings {
    HostIdentitySettings {
        secrets: vec![HOST_SECRET.into()],
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..HostIdentitySettings::default()
    }
}

fn jwt(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("signed")
}

fn signed_in(sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jwt(
        HOST_SECRET,
        &json!({"sub": sub, "name": "Ada", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_has_the_same_history_on_two_devices() {
    let s = start_with(|c| c.web.host_identity = Some(host_identity())).await;
    let (mut phone, welcome, history) = open(&ws_url(
        &s,
        &format!("?identity={}", signed_in("customer-42")),
    ))
    .await;
    assert!(history.is_empty());
    assert_eq!(welcome["identity"], "host");
    assert_eq!(welcome["user"], "h:customer-42");
    assert_eq!(welcome["conversation"], "h:customer-42");
    assert!(
        welcome.get("token").is_none(),
        "no visitor token: {welcome}"
    );
    assert_eq!(
        say(&mut phone, "/echo from my phone").await["text"],
        "from my phone"
    );

    // The laptop signs in with a token of its own: same user, same conversation, same history.
    let laptop_url = ws_url(&s, &format!("?identity={}", signed_in("customer-42")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut laptop, welcome, history) = loop {
        let opened = open(&laptop_url).await;
        if opened.2.len() == 2 {
            break opened;
        }
        // The answer enters the history once delivered.
        assert!(tokio::time::Instant::now() < deadline, "{:?}", opened.2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(welcome["user"], "h:customer-42");
    assert_eq!(history, ["/echo from my phone", "from my phone"]);
    // Both devices see the conversation go on.
    assert_eq!(
        say(&mut laptop, "/echo from my laptop").await["text"],
        "from my laptop"
    );
    assert_eq!(
        next_frame(&mut phone, "message").await["text"],
        "from my laptop"
    );

    // Another signed-in user has a conversation of their own; a user id the claim cannot be
    // as is (characters outside the id alphabet) still gets a stable one.
    let (_, other, history) = open(&ws_url(
        &s,
        &format!("?identity={}", signed_in("customer-43")),
    ))
    .await;
    assert_eq!(other["user"], "h:customer-43");
    assert!(history.is_empty());
    let odd = open(&ws_url(
        &s,
        &format!("?identity={}", signed_in("auth0|7 7")),
    ))
    .await
    .1;
    let again = open(&ws_url(
        &s,
        &format!("?identity={}", signed_in("auth0|7 7")),
    ))
    .await
    .1;
    assert_eq!(odd["user"], again["user"]);
    assert!(odd["user"].as_str().expect("user").starts_with("h:"));
    s.stop().await;
}

/// Connect with `identity`; the error frame's detail and the close code.
async fn refused(s: &Server, identity: &str) -> (String, Option<u16>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(s, &format!("?identity={identity}")))
        .await
        .expect("connect");
    let mut detail = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("frame in time");
        match frame {
            Some(Ok(Ws::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                assert_eq!(v["type"], "error", "refused before any welcome: {v}");
                detail = v["detail"].as_str().map(str::to_owned);
            }
            Some(Ok(Ws::Close(frame))) => {
                let detail = detail.expect("an error frame before the close");
                assert!(!detail.contains(identity), "the token is not echoed");
                return (detail, frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signed_identity_is_refused_with_a_clear_error_frame() {
    let s = start_with(|c| c.web.host_identity = Some(host_identity())).await;
    let now = chrono::Utc::now().timestamp();
    let base = json!({"sub": "customer-42", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let mut no_sub = base.clone();
    no_sub.as_object_mut().expect("object").remove("sub");
    let cases = [
        (
            jwt("not-the-shop-secret-0123456789abcdef", &base),
            "signature",
        ),
        (jwt(HOST_SECRET, &with("exp", json!(now - 3600))), "expired"),
        (
            jwt(HOST_SECRET, &with("iss", json!("https://evil.example"))),
            "issuer",
        ),
        (
            jwt(HOST_SECRET, &with("aud", json!("someone-else"))),
            "audience",
        ),
        (jwt(HOST_SECRET, &no_sub), "'sub' claim"),
        ("not.a.jwt".to_owned(), "malformed"),
    ];
    for (token, why) in cases {
        let (detail, code) = refused(&s, &token).await;
        assert!(detail.contains(why), "{why}: {detail}");
        assert_eq!(code, Some(1008), "{why}");
    }
    s.stop().await;

    // A chat without `[web.host_identity]` takes no signed identities at all.
    let s = start().await;
    let (detail, code) = refused(&s, &signed_in("customer-42")).await;
    assert!(detail.contains("does not accept"), "{detail}");
    assert_eq!(code, Some(1008));
    s.stop().await;
}
