//! JWT verification: shared secrets, and RS256/ES256 keys from a JWKS served on 127.0.0.1
//! (the fixture keys in `tests/fixtures/jwt/`), with rotation and refetch limits.
#![cfg(feature = "jwt")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::jwt::{JwksSource, JwtAlgorithm, JwtConfig, JwtError, JwtKeys, JwtVerifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210-test";

const RSA_1: &str = include_str!("fixtures/jwt/rsa-1.pem");
const RSA_1_PUBLIC: &str = include_str!("fixtures/jwt/rsa-1.pub.pem");
const RSA_2: &str = include_str!("fixtures/jwt/rsa-2.pem");
const EC_1: &str = include_str!("fixtures/jwt/ec-1.pem");
const JWKS: &str = include_str!("fixtures/jwt/jwks.json");

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Claims for a user, valid for ten minutes.
fn claims() -> Value {
    json!({"sub": "ada", "roles": ["admin"], "exp": now() + 600, "iat": now()})
}

fn hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret).expect("secret"),
    )
    .expect("signed")
}

fn rs(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key"),
    )
    .expect("signed")
}

fn es(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC key"),
    )
    .expect("signed")
}

fn secrets() -> JwtVerifier {
    JwtVerifier::new(JwtConfig::secrets([SECRET])).expect("verifier")
}

async fn refused(verifier: &JwtVerifier, token: &str) -> JwtError {
    let e = verifier.verify(token).await.expect_err("refused");
    // Whatever was wrong, the message never carries the token or a part of it.
    let text = e.to_string();
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "{text} echoes the token");
    }
    e
}

#[tokio::test]
async fn a_token_signed_with_the_secret_gives_its_claims() {
    let claims = secrets()
        .verify(&hs(Algorithm::HS256, SECRET, &claims()))
        .await
        .expect("valid");
    assert_eq!(claims["sub"], "ada");
    assert_eq!(claims["roles"], json!(["admin"]));
}

#[tokio::test]
async fn a_token_verified_once_is_remembered_and_a_changed_one_is_not() {
    let v = secrets();
    let token = hs(Algorithm::HS256, SECRET, &claims());
    let first = v.verify_shared(&token).await.expect("valid");
    let again = v.verify_shared(&token).await.expect("still valid");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "the second check reads the remembered claims"
    );
    // One character in the middle of the signature changed (every bit of it counts there,
    // unlike the last character's): checked again, and refused.
    let at = token.rfind('.').expect("a signature") + 10;
    let old = token[at..].chars().next().expect("a character");
    let forged = format!(
        "{}{}{}",
        &token[..at],
        if old == 'A' { 'B' } else { 'A' },
        &token[at + 1..]
    );
    assert_eq!(refused(&v, &forged).await, JwtError::BadSignature);
}

#[tokio::test]
async fn expiry_is_required_and_checked_with_the_leeway() {
    let v = secrets(); // 60 s of leeway by default
    let mut c = claims();
    c["exp"] = json!(now() - 30);
    v.verify(&hs(Algorithm::HS256, SECRET, &c))
        .await
        .expect("within the leeway");
    c["exp"] = json!(now() - 120);
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &c)).await,
        JwtError::Expired
    );

    let strict =
        JwtVerifier::new(JwtConfig::secrets([SECRET]).leeway(Duration::ZERO)).expect("verifier");
    c["exp"] = json!(now() - 30);
    assert_eq!(
        refused(&strict, &hs(Algorithm::HS256, SECRET, &c)).await,
        JwtError::Expired
    );

    let mut no_exp = claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &no_exp)).await,
        JwtError::MissingClaim("exp".into())
    );
    let mut text_exp = claims();
    text_exp["exp"] = json!("tomorrow");
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &text_exp)).await,
        JwtError::MissingClaim("exp".into())
    );
}

#[tokio::test]
async fn not_before_is_honoured_with_the_leeway() {
    let v = secrets();
    let mut c = claims();
    c["nbf"] = json!(now() + 30);
    v.verify(&hs(Algorithm::HS256, SECRET, &c))
        .await
        .expect("within the leeway");
    c["nbf"] = json!(now() + 300);
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &c)).await,
        JwtError::NotYetValid
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match_when_configured() {
    let v = JwtVerifier::new(
        JwtConfig::secrets([SECRET])
            .issuer("https://login.example.com/")
            .audience("flowbot"),
    )
    .expect("verifier");
    let mut c = claims();
    c["iss"] = json!("https://login.example.com/");
    c["aud"] = json!(["other", "flowbot"]);
    v.verify(&hs(Algorithm::HS256, SECRET, &c))
        .await
        .expect("issuer and audience match");

    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://evil.example.com/");
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &wrong_iss)).await,
        JwtError::WrongIssuer
    );
    let mut wrong_aud = c.clone();
    wrong_aud["aud"] = json!("someone-else");
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &wrong_aud)).await,
        JwtError::WrongAudience
    );
    let mut no_aud = c.clone();
    no_aud.as_object_mut().expect("object").remove("aud");
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, SECRET, &no_aud)).await,
        JwtError::MissingClaim("aud".into())
    );
    // Without an audience configured, a token's `aud` is not checked.
    secrets()
        .verify(&hs(Algorithm::HS256, SECRET, &c))
        .await
        .expect("no audience to check");
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_rotated_secrets_are_both_accepted() {
    let v = secrets();
    assert_eq!(
        refused(&v, &hs(Algorithm::HS256, OTHER_SECRET, &claims())).await,
        JwtError::BadSignature
    );
    // A payload changed after signing.
    let token = hs(Algorithm::HS256, SECRET, &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut forged = claims();
    forged["roles"] = json!(["owner"]);
    parts[1] = hs(Algorithm::HS256, OTHER_SECRET, &forged)
        .split('.')
        .nth(1)
        .expect("payload")
        .to_owned();
    assert_eq!(refused(&v, &parts.join(".")).await, JwtError::BadSignature);

    let both = JwtVerifier::new(JwtConfig::secrets([SECRET, OTHER_SECRET])).expect("verifier");
    for secret in [SECRET, OTHER_SECRET] {
        both.verify(&hs(Algorithm::HS256, secret, &claims()))
            .await
            .expect("either secret");
    }
}

#[tokio::test]
async fn unlisted_algorithms_and_alg_none_are_refused() {
    let v = secrets();
    assert!(matches!(
        refused(&v, &hs(Algorithm::HS512, SECRET, &claims())).await,
        JwtError::AlgorithmNotAllowed(a) if a.contains("HS512")
    ));
    // {"alg":"none","typ":"JWT"} over a real payload, with and without a signature.
    let payload = hs(Algorithm::HS256, SECRET, &claims())
        .split('.')
        .nth(1)
        .expect("payload")
        .to_owned();
    for token in [
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.c2ln"),
    ] {
        assert!(
            matches!(refused(&v, &token).await, JwtError::AlgorithmNotAllowed(a) if a.contains("none")),
            "alg none"
        );
    }
    let more = JwtVerifier::new(
        JwtConfig::secrets([SECRET]).algorithms([JwtAlgorithm::HS256, JwtAlgorithm::HS512]),
    )
    .expect("verifier");
    more.verify(&hs(Algorithm::HS512, SECRET, &claims()))
        .await
        .expect("HS512 allowed");
}

#[tokio::test]
async fn malformed_tokens_get_a_clear_error() {
    let v = secrets();
    for token in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "!!!.???.***",
        "bm90IGpzb24.bm90IGpzb24.c2ln",
    ] {
        assert!(
            matches!(refused(&v, token).await, JwtError::Malformed(_)),
            "{token:?}"
        );
    }
    // A well-formed header is checked by its signature first.
    assert_eq!(
        refused(&v, "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJl").await,
        JwtError::BadSignature
    );
    let huge = format!("a.{}.c", "b".repeat(20_000));
    assert!(matches!(refused(&v, &huge).await, JwtError::Malformed(m) if m.contains("bytes")));
}

/// A JWKS provider on 127.0.0.1: serves the fixture keys named in `served` (or HTTP 500
/// when `down`) and counts requests.
struct Provider {
    url: String,
    served: Arc<Mutex<Vec<&'static str>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(kids: &[&'static str]) -> Provider {
        let served = Arc::new(Mutex::new(kids.to_vec()));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let all: Value = serde_json::from_str(JWKS).expect("fixture JWKS");
        let (s, d, r) = (served.clone(), down.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (s, d, r, all) = (s.clone(), d.clone(), r.clone(), all.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    }
                    let kids = s.lock().expect("lock").clone();
                    let keys: Vec<Value> = all["keys"]
                        .as_array()
                        .expect("keys")
                        .iter()
                        .filter(|k| kids.iter().any(|kid| k["kid"] == *kid))
                        .cloned()
                        .collect();
                    Ok(axum::Json(json!({ "keys": keys })))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Provider {
            url: format!("http://{addr}/.well-known/jwks.json"),
            served,
            down,
            requests,
        }
    }

    fn serve(&self, kids: &[&'static str]) {
        *self.served.lock().expect("lock") = kids.to_vec();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn verifier(&self, refetch: Duration) -> JwtVerifier {
        self.verifier_with(JwksSource::new(&self.url).min_refetch_interval(refetch))
    }

    fn verifier_with(&self, source: JwksSource) -> JwtVerifier {
        JwtVerifier::new(JwtConfig::with_keys(JwtKeys::Jwks(source))).expect("verifier")
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn rs256_and_es256_tokens_verify_against_the_jwks() {
    let p = Provider::start(&["rsa-1", "ec-1"]).await;
    let v = p.verifier(HOUR);
    let claims_rs = v
        .verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("RS256");
    assert_eq!(claims_rs["sub"], "ada");
    let claims_es = v.verify(&es(EC_1, "ec-1", &claims())).await.expect("ES256");
    assert_eq!(claims_es["roles"], json!(["admin"]));
    assert_eq!(p.requests(), 1, "the set is fetched once and cached");

    // The right kid, the wrong key: a bad signature. Claims are still checked.
    assert_eq!(
        refused(&v, &rs(RSA_2, "rsa-1", &claims())).await,
        JwtError::BadSignature
    );
    let mut old = claims();
    old["exp"] = json!(now() - 3600);
    assert_eq!(
        refused(&v, &es(EC_1, "ec-1", &old)).await,
        JwtError::Expired
    );
    // An RS256 token naming the EC key has no key to check it.
    assert!(matches!(
        refused(&v, &rs(RSA_1, "ec-1", &claims())).await,
        JwtError::UnknownKey { .. }
    ));
    // Without a kid, the keys of the token's kind are tried.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = None;
    let no_kid = encode(
        &header,
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_1.as_bytes()).expect("key"),
    )
    .expect("signed");
    v.verify(&no_kid).await.expect("no kid, one RSA key");
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_public_key_is_refused() {
    let p = Provider::start(&["rsa-1"]).await;
    let v = p.verifier(HOUR);
    // The classic confusion: HS256 with the RSA public key (PEM or JWK text) as the secret.
    for secret in [RSA_1_PUBLIC.as_bytes(), JWKS.as_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let token = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret).expect("secret"),
        )
        .expect("signed");
        assert!(matches!(
            refused(&v, &token).await,
            JwtError::AlgorithmNotAllowed(a) if a.contains("HS256")
        ));
    }
    // Even a verifier told to allow every public-key algorithm never takes HMAC from a JWKS.
    assert!(matches!(
        JwtVerifier::new(JwtConfig::jwks(&p.url).algorithms([JwtAlgorithm::HS256])),
        Err(JwtError::Config(_))
    ));
}

#[tokio::test]
async fn a_rotated_key_verifies_after_one_refetch() {
    let p = Provider::start(&["rsa-1"]).await;
    let v = p.verifier(Duration::ZERO);
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("rsa-1");
    assert_eq!(p.requests(), 1);

    // The provider rotates: rsa-2 is added, rsa-1 will go.
    p.serve(&["rsa-1", "rsa-2"]);
    v.verify(&rs(RSA_2, "rsa-2", &claims()))
        .await
        .expect("rsa-2 after a refetch");
    assert_eq!(p.requests(), 2, "one refetch for the new kid");
    v.verify(&rs(RSA_2, "rsa-2", &claims()))
        .await
        .expect("rsa-2 cached");
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("rsa-1 still served");
    assert_eq!(p.requests(), 2, "known kids fetch nothing");

    p.serve(&["rsa-2"]);
    // rsa-1 is still cached: the set is not fetched again until it is old or a kid is new.
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("cached until max age");
    assert_eq!(p.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let p = Provider::start(&["rsa-1"]).await;
    let v = Arc::new(p.verifier(HOUR));
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("rsa-1");
    assert_eq!(p.requests(), 1);

    let flood: Vec<_> = (0..200)
        .map(|i| {
            let v = v.clone();
            let token = rs(RSA_1, &format!("made-up-{i}"), &claims());
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for task in flood {
        assert!(matches!(
            task.await.expect("task"),
            Err(JwtError::UnknownKey { kid: Some(k) }) if k.starts_with("made-up-")
        ));
    }
    assert_eq!(p.requests(), 1, "fetched within the interval: no refetch");

    // With a short interval, refetches for unknown kids come no closer than the interval.
    let interval = Duration::from_millis(100);
    let p = Provider::start(&["rsa-1"]).await;
    let v = p.verifier(interval);
    let started = std::time::Instant::now();
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("rsa-1");
    let unknown = rs(RSA_1, "unknown", &claims());
    let deadline = started + Duration::from_secs(20);
    let mut tries = 0u64;
    while p.requests() < 3 {
        assert!(std::time::Instant::now() < deadline, "no refetch in time");
        let _ = v.verify(&unknown).await;
        tries += 1;
        tokio::task::yield_now().await;
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= interval * 2,
        "3 fetches in {elapsed:?} ({tries} tries): closer than the {interval:?} interval"
    );
    assert!(tries > 3, "the flood outnumbered the fetches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_verifications_share_one_fetch() {
    let p = Provider::start(&["rsa-1", "ec-1"]).await;
    let v = Arc::new(p.verifier(HOUR));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let v = v.clone();
            let token = if i % 2 == 0 {
                rs(RSA_1, "rsa-1", &claims())
            } else {
                es(EC_1, "ec-1", &claims())
            };
            tokio::spawn(async move { v.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("valid");
    }
    assert_eq!(p.requests(), 1);
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_clear_error_and_is_not_hammered() {
    let p = Provider::start(&["rsa-1"]).await;
    p.down.store(true, Ordering::SeqCst);
    let v = p.verifier(HOUR);
    for _ in 0..5 {
        assert!(matches!(
            refused(&v, &rs(RSA_1, "rsa-1", &claims())).await,
            JwtError::Jwks(m) if m.contains("500")
        ));
    }
    assert_eq!(p.requests(), 1, "one failed fetch per interval");

    // Once the provider is back, a verifier allowed to refetch recovers.
    p.down.store(false, Ordering::SeqCst);
    let v = p.verifier(Duration::ZERO);
    v.verify(&rs(RSA_1, "rsa-1", &claims()))
        .await
        .expect("provider back");
}

#[tokio::test]
async fn the_set_is_fetched_again_after_its_max_age() {
    let p = Provider::start(&["rsa-1"]).await;
    let v = p.verifier_with(
        JwksSource::new(&p.url)
            .min_refetch_interval(Duration::ZERO)
            .max_age(Duration::ZERO),
    );
    let token = rs(RSA_1, "rsa-1", &claims());
    for n in 1..=3 {
        v.verify(&token).await.expect("valid");
        assert_eq!(p.requests(), n, "each verification finds the set too old");
    }
    // An old set is kept when the refresh fails.
    p.down.store(true, Ordering::SeqCst);
    v.verify(&token).await.expect("the cached keys stay");
    assert_eq!(p.requests(), 4);
}
