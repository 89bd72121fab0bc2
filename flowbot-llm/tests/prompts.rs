//! Prompts: strict templates, per-model variants, versions, diffs, A/B splits, outcome
//! statistics, and persistence in a key-value store and a folder.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use flowbot_core::StoreError;
use flowbot_core::llm::{ChatMessage, Usage};
use flowbot_core::store::KvStore;
use flowbot_llm::prompt::{
    ContextChunk, Outcome, PROMPTS_NAMESPACE, PromptContent, PromptContext, PromptError,
    PromptLibrary, STATS_NAMESPACE, Variant, VersionMeta, VersionStats,
};
use serde_json::{Map, Value, json};

/// flowbot-core has no in-memory `KvStore` and flowbot-llm may not depend on flowbot-store,
/// so this is one over a map. It yields between reading and writing, as a database round
/// trip would, so that unserialised read-modify-writes would lose updates here.
#[derive(Default)]
struct MapKv {
    data: Mutex<BTreeMap<(String, String), Value>>,
}

impl MapKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Value>> {
        self.data.lock().unwrap()
    }
}

#[async_trait]
impl KvStore for MapKv {
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let v = self.lock().get(&(namespace.into(), key.into())).cloned();
        tokio::task::yield_now().await;
        Ok(v)
    }

    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.lock()
            .insert((namespace.into(), key.into()), value.clone());
        Ok(())
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .remove(&(namespace.into(), key.into()))
            .is_some())
    }

    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn map(v: &Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn context() -> PromptContext {
    let mut cx = PromptContext::new()
        .with_session(map(&json!({"name": "Ana", "lang": "Portuguese"})))
        .with_slots(map(&json!({"order": "1234"})))
        .with_var("bot", json!("Flo"))
        .with_context(vec![
            ContextChunk {
                title: "Returns".into(),
                url: Some("https://example.com/returns".into()),
                text: "Returns are free within 30 days.".into(),
            },
            ContextChunk {
                title: "Shipping".into(),
                url: None,
                text: "Orders ship in 2 days.".into(),
            },
        ]);
    cx.message.text = "Can I return order 1234?".into();
    cx.message.user = Some("u-42".into());
    cx.message.channel = Some("web".into());
    cx.now = Utc.with_ymd_and_hms(2026, 5, 2, 9, 30, 0).unwrap();
    cx
}

const SUPPORT: &str = "\
You are {{ vars.bot }}, helping {{ session.name }} on {{ message.channel }}.
Today is {{ now[:10] }}. Answer in {{ session.lang }}.
{% for c in context %}
[{{ loop.index }}] {{ c.title }}{% if c.url %} ({{ c.url }}){% endif %}: {{ c.text }}
{% endfor %}
Order in question: {{ slots.order }}.";

#[test]
fn renders_every_part_of_the_context() {
    let mut lib = PromptLibrary::new();
    lib.put(
        "support",
        PromptContent::system(SUPPORT).with_user("{{ message.user }} asks: {{ message.text }}"),
        VersionMeta::default(),
    )
    .unwrap();
    let r = lib
        .render("support", "openai/gpt-4o", None, &context())
        .unwrap();
    assert_eq!(
        (r.name.as_str(), r.version, r.variant.as_deref()),
        ("support", 1, None)
    );
    assert_eq!(
        r.system,
        "You are Flo, helping Ana on web.\nToday is 2026-05-02. Answer in Portuguese.\n\
         [1] Returns (https://example.com/returns): Returns are free within 30 days.\n\
         [2] Shipping: Orders ship in 2 days.\n\
         Order in question: 1234."
    );
    assert_eq!(
        r.user.as_deref(),
        Some("u-42 asks: Can I return order 1234?")
    );
    assert_eq!(
        r.messages(),
        vec![
            ChatMessage::system(r.system),
            ChatMessage::user("u-42 asks: Can I return order 1234?")
        ]
    );
    // The context of a core message.
    let m = flowbot_core::Message::text(
        "telegram",
        "chat-1",
        flowbot_core::Sender::user("u-7"),
        "hi there",
    );
    let cx = PromptContext::for_message(&m);
    assert_eq!(cx.message.text, "hi there");
    assert_eq!(cx.message.user.as_deref(), Some("u-7"));
    assert_eq!(cx.message.channel.as_deref(), Some("telegram"));
}

#[test]
fn undefined_names_are_errors_naming_the_template_and_line() {
    let mut lib = PromptLibrary::new();
    lib.put(
        "greet",
        PromptContent::system("Hello {{ session.name }}.\nYou speak {{ session.lnag }}.\n"),
        VersionMeta::default(),
    )
    .unwrap();
    let err = lib
        .render("greet", "openai/gpt-4o", None, &context())
        .unwrap_err();
    let PromptError::Render {
        template,
        line,
        message,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(template, "greet@v1/system");
    assert_eq!(*line, Some(2));
    assert!(message.contains("undefined"), "{message}");
    assert!(
        message.contains("session.lnag"),
        "the expression is named: {message}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("template 'greet@v1/system', line 2: "),
        "{text}"
    );

    // A typo in a top-level name, in the user template of version 2.
    lib.put(
        "greet",
        PromptContent::system("Hi.").with_user("{{ mesage.text }}"),
        VersionMeta::default(),
    )
    .unwrap();
    let err = lib
        .render_version("greet", 2, "openai/gpt-4o", &context())
        .unwrap_err();
    assert!(
        matches!(&err, PromptError::Render { template, line: Some(1), .. } if template == "greet@v2/user"),
        "{err:?}"
    );
    // Iterating or testing an undefined value fails too.
    for bad in [
        "{% for x in nothing %}{{ x }}{% endfor %}",
        "{% if session.missing %}y{% endif %}",
    ] {
        lib.put("strict", PromptContent::system(bad), VersionMeta::default())
            .unwrap();
        let v = lib.get("strict").unwrap().latest().unwrap().version;
        assert!(
            matches!(
                lib.render_version("strict", v, "m", &context()),
                Err(PromptError::Render { .. })
            ),
            "{bad}"
        );
    }
    // Optional values are asked for explicitly.
    lib.put(
        "optional",
        PromptContent::system(
            "{{ session.nickname | default('friend') }}/{% if session.nickname is defined %}set{% else %}unset{% endif %}",
        ),
        VersionMeta::default(),
    )
    .unwrap();
    let r = lib.render("optional", "m", None, &context()).unwrap();
    assert_eq!(r.system, "friend/unset");
}

#[test]
fn syntax_errors_are_refused_at_put() {
    let mut lib = PromptLibrary::new();
    let err = lib
        .put(
            "broken",
            PromptContent::system("Line one.\nLine two.\n{% if x %}unclosed"),
            VersionMeta::default(),
        )
        .unwrap_err();
    let PromptError::Syntax { template, line, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(template, "broken@v1/system");
    assert_eq!(*line, Some(3));
    assert!(lib.get("broken").is_none(), "nothing stored");
    // In a variant, the variant is named.
    let err = lib
        .put(
            "broken",
            PromptContent::system("fine").with_variant(
                "anthropic/*",
                Variant {
                    system: Some("{{ oops ".into()),
                    user: None,
                },
            ),
            VersionMeta::default(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, PromptError::Syntax { template, line: Some(1), .. } if template == "broken@v1/system[anthropic/*]"),
        "{err:?}"
    );
    // Too much work is an error, not a stuck worker.
    lib.put(
        "busy",
        PromptContent::system(
            "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
        ),
        VersionMeta::default(),
    )
    .unwrap();
    let err = lib.render("busy", "m", None, &context()).unwrap_err();
    assert!(
        matches!(&err, PromptError::Render { message, .. } if message.contains("fuel")),
        "{err}"
    );
}

#[test]
fn names_and_variants_are_checked() {
    let mut lib = PromptLibrary::new();
    for bad in ["", ".hidden", "a/b", "with space", "ünï", &"x".repeat(101)] {
        let err = lib
            .put(bad, PromptContent::system("x"), VersionMeta::default())
            .unwrap_err();
        assert!(
            matches!(err, PromptError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
    }
    lib.put(
        "ok_name-1.2",
        PromptContent::system("x"),
        VersionMeta::default(),
    )
    .unwrap();
    for (pattern, variant) in [
        (
            "*",
            Variant {
                system: Some("x".into()),
                user: None,
            },
        ),
        (
            "open*ai/*",
            Variant {
                system: Some("x".into()),
                user: None,
            },
        ),
        ("anthropic/*", Variant::default()),
    ] {
        let err = lib
            .put(
                "v",
                PromptContent::system("x").with_variant(pattern, variant),
                VersionMeta::default(),
            )
            .unwrap_err();
        assert!(
            matches!(&err, PromptError::InvalidVariant { pattern: p, .. } if p == pattern),
            "{err}"
        );
    }
    assert!(
        matches!(lib.render("nope", "m", None, &context()), Err(PromptError::NotFound(n)) if n == "nope")
    );
    assert!(matches!(
        lib.render_version("ok_name-1.2", 7, "m", &context()),
        Err(PromptError::NoVersion { version: 7, .. })
    ));
}

#[test]
fn variants_override_by_model() {
    let mut lib = PromptLibrary::new();
    let content = PromptContent::system("default system")
        .with_user("default user")
        .with_variant(
            "anthropic/*",
            Variant {
                system: Some("claude system".into()),
                user: None,
            },
        )
        .with_variant(
            "openai/*",
            Variant {
                system: Some("openai system".into()),
                user: None,
            },
        )
        .with_variant(
            "openai/gpt-4o*",
            Variant {
                system: None,
                user: Some("4o family user".into()),
            },
        )
        .with_variant(
            "openai/gpt-4o-mini",
            Variant {
                system: Some("mini system".into()),
                user: None,
            },
        )
        .with_variant(
            "o3",
            Variant {
                system: Some("o3 system".into()),
                user: None,
            },
        );
    lib.put("p", content, VersionMeta::default()).unwrap();
    let r = |model: &str| {
        let r = lib.render("p", model, None, &context()).unwrap();
        (r.variant, r.system, r.user.unwrap())
    };
    let s = |v: Option<&str>, sys: &str, user: &str| {
        (v.map(String::from), sys.to_owned(), user.to_owned())
    };
    assert_eq!(
        r("anthropic/claude-sonnet-4-5"),
        s(Some("anthropic/*"), "claude system", "default user")
    );
    assert_eq!(
        r("openai/gpt-4.1"),
        s(Some("openai/*"), "openai system", "default user")
    );
    // The longest pattern wins; a variant overriding only the user keeps the default system.
    assert_eq!(
        r("openai/gpt-4o"),
        s(Some("openai/gpt-4o*"), "default system", "4o family user")
    );
    // An exact name wins over every pattern.
    assert_eq!(
        r("openai/gpt-4o-mini"),
        s(Some("openai/gpt-4o-mini"), "mini system", "default user")
    );
    // A bare model name matches whatever the provider prefix.
    assert_eq!(
        r("openai_responses/o3"),
        s(Some("o3"), "o3 system", "default user")
    );
    assert_eq!(
        r("gemini/gemini-2.5-pro"),
        s(None, "default system", "default user")
    );
}

#[test]
fn versions_diff_activate_and_rollback() {
    let mut lib = PromptLibrary::new();
    let v1 = PromptContent::system(
        "You are {{ vars.bot }}.\nBe brief.\nAnswer in {{ session.lang }}.\n",
    );
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let put = lib
        .put_at("greet", v1.clone(), VersionMeta::new("ana", "first"), t0)
        .unwrap();
    assert_eq!((put.version, put.created), (1, true));
    // The same content again: no new version, whoever says so.
    let put = lib
        .put("greet", v1.clone(), VersionMeta::new("bo", "again"))
        .unwrap();
    assert_eq!((put.version, put.created), (1, false));
    let v2 = PromptContent::system(
        "You are {{ vars.bot }}.\nBe brief and friendly.\nAnswer in {{ session.lang }}.\n",
    )
    .with_user("{{ message.text }}");
    let put = lib
        .put("greet", v2, VersionMeta::new("bo", "friendlier"))
        .unwrap();
    assert_eq!((put.version, put.created), (2, true));
    let p = lib.get("greet").unwrap();
    assert_eq!(p.versions().len(), 2);
    assert_eq!(p.active(), 1, "a new version waits for activation");
    let first = p.version(1).unwrap();
    assert_eq!(first.created_at, t0);
    assert_eq!(first.meta, VersionMeta::new("ana", "first"));
    assert_eq!(first.hash, v1.hash());
    assert_eq!(first.hash.len(), 64);
    assert_ne!(first.hash, p.version(2).unwrap().hash);
    assert_eq!(
        PromptContent::system("x").hash(),
        PromptContent::system("x").hash()
    );

    assert_eq!(
        lib.diff("greet", 1, 2).unwrap(),
        "--- greet@v1\n\
         +++ greet@v2\n\
         @@ -1,4 +1,6 @@\n \
         === system ===\n \
         You are {{ vars.bot }}.\n\
         -Be brief.\n\
         +Be brief and friendly.\n \
         Answer in {{ session.lang }}.\n\
         +=== user ===\n\
         +{{ message.text }}\n"
    );
    assert_eq!(lib.diff("greet", 2, 2).unwrap(), "");
    assert!(matches!(
        lib.diff("greet", 1, 3),
        Err(PromptError::NoVersion { version: 3, .. })
    ));

    let cx = context();
    assert_eq!(lib.render("greet", "m", None, &cx).unwrap().version, 1);
    lib.activate("greet", 2).unwrap();
    let r = lib.render("greet", "m", None, &cx).unwrap();
    assert_eq!(
        (r.version, r.system.as_str()),
        (
            2,
            "You are Flo.\nBe brief and friendly.\nAnswer in Portuguese."
        )
    );
    lib.activate("greet", 2).unwrap(); // no-op: does not add to the history
    let v3 = PromptContent::system("v3");
    lib.put("greet", v3, VersionMeta::default()).unwrap();
    lib.activate("greet", 3).unwrap();
    assert_eq!(lib.rollback("greet").unwrap(), 2);
    assert_eq!(lib.rollback("greet").unwrap(), 1);
    assert_eq!(lib.get("greet").unwrap().active(), 1);
    assert!(matches!(lib.rollback("greet"), Err(PromptError::NoPrevious(n)) if n == "greet"));
    assert!(matches!(
        lib.activate("greet", 9),
        Err(PromptError::NoVersion { version: 9, .. })
    ));
    assert!(matches!(
        lib.activate("other", 1),
        Err(PromptError::NotFound(_))
    ));
}

fn ab_library() -> PromptLibrary {
    let mut lib = PromptLibrary::new();
    lib.put(
        "support",
        PromptContent::system("A"),
        VersionMeta::default(),
    )
    .unwrap();
    lib.put(
        "support",
        PromptContent::system("B"),
        VersionMeta::default(),
    )
    .unwrap();
    lib.put(
        "support",
        PromptContent::system("C"),
        VersionMeta::default(),
    )
    .unwrap();
    lib
}

/// Expected counts computed independently: Python's hashlib.sha256 of
/// `"support\nuser-{i}"`, first 8 bytes big-endian, modulo the weights' sum.
#[test]
fn ab_assignment_is_sticky_and_follows_the_weights() {
    let mut lib = ab_library();
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let count = |lib: &PromptLibrary| {
        let mut c = BTreeMap::new();
        for u in &users {
            *c.entry(lib.assign("support", Some(u)).unwrap())
                .or_insert(0) += 1;
        }
        c
    };
    // No split: everyone gets the active version.
    assert_eq!(count(&lib), BTreeMap::from([(1, 1000)]));
    lib.set_split("support", &[(1, 70), (2, 30)]).unwrap();
    assert_eq!(count(&lib), BTreeMap::from([(1, 708), (2, 292)]));
    lib.set_split("support", &[(1, 1), (2, 1), (3, 2)]).unwrap();
    let c = count(&lib);
    assert_eq!(c, BTreeMap::from([(1, 253), (2, 236), (3, 511)]));
    // Sticky: the same user, the same version, every time; rendering follows.
    for u in &users[..50] {
        let v = lib.assign("support", Some(u)).unwrap();
        assert_eq!(lib.assign("support", Some(u)).unwrap(), v);
        let r = lib.render("support", "m", Some(u), &context()).unwrap();
        assert_eq!(r.version, v);
        assert_eq!(r.system, ["A", "B", "C"][v as usize - 1]);
    }
    // Without a user, the active version.
    assert_eq!(lib.assign("support", None).unwrap(), 1);
    // Ending the split.
    lib.set_split("support", &[]).unwrap();
    assert_eq!(count(&lib), BTreeMap::from([(1, 1000)]));
    // Bad splits.
    for (arms, what) in [
        (&[(1, 50), (9, 50)][..], "no version 9"),
        (&[(1, 50), (1, 50)][..], "twice"),
        (&[(1, 0), (2, 0)][..], "every weight is 0"),
    ] {
        let err = lib.set_split("support", arms).unwrap_err();
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[tokio::test]
async fn outcomes_are_recorded_per_version_without_lost_updates() {
    let mut lib = ab_library();
    lib.set_split("support", &[(1, 1), (2, 1)]).unwrap();
    let lib = Arc::new(lib);
    let kv = Arc::new(MapKv::default());
    let usage = Usage {
        input_tokens: 120,
        output_tokens: 30,
        ..Usage::default()
    };
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let (lib, kv) = (lib.clone(), kv.clone());
        tasks.push(tokio::spawn(async move {
            let version = if i % 5 == 0 { 2 } else { 1 };
            let call = Outcome::call(&usage, 250, Duration::from_millis(100 + i));
            lib.record_outcome(kv.as_ref(), "support", version, &call)
                .await
                .unwrap();
            let feedback = Outcome::feedback(i % 2 == 0);
            lib.record_outcome(kv.as_ref(), "support", version, &feedback)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = lib.stats(kv.as_ref(), "support").await.unwrap();
    let latency = |vs: &[u64]| vs.iter().map(|i| 100 + i).sum::<u64>();
    let v1: Vec<u64> = (0..50).filter(|i| i % 5 != 0).collect();
    let v2: Vec<u64> = (0..50).filter(|i| i % 5 == 0).collect();
    assert_eq!(
        stats,
        vec![
            VersionStats {
                version: 1,
                calls: 40,
                tokens_in: 40 * 120,
                tokens_out: 40 * 30,
                cost_micros: 40 * 250,
                latency_ms_total: latency(&v1),
                positive: v1.iter().filter(|i| *i % 2 == 0).count() as u64,
                negative: v1.iter().filter(|i| *i % 2 == 1).count() as u64,
            },
            VersionStats {
                version: 2,
                calls: 10,
                tokens_in: 10 * 120,
                tokens_out: 10 * 30,
                cost_micros: 10 * 250,
                latency_ms_total: latency(&v2),
                positive: v2.iter().filter(|i| *i % 2 == 0).count() as u64,
                negative: v2.iter().filter(|i| *i % 2 == 1).count() as u64,
            },
            VersionStats {
                version: 3,
                ..VersionStats::default()
            },
        ]
    );
    assert_eq!(stats[1].mean_latency_ms(), Some(latency(&v2) / 10));
    assert_eq!(stats[2].mean_latency_ms(), None);
    assert_eq!(stats[1].positive_rate(), Some(0.5));
    // Stored one key per version.
    let keys: Vec<String> = kv
        .kv_list(STATS_NAMESPACE)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["support@1", "support@2"]);
    // Unknown prompts and versions are refused; sums saturate.
    assert!(matches!(
        lib.record_outcome(kv.as_ref(), "support", 4, &Outcome::feedback(true))
            .await,
        Err(PromptError::NoVersion { version: 4, .. })
    ));
    let huge = Outcome::call(
        &Usage {
            input_tokens: u64::MAX,
            ..Usage::default()
        },
        u64::MAX,
        Duration::MAX,
    );
    lib.record_outcome(kv.as_ref(), "support", 3, &huge)
        .await
        .unwrap();
    let s = lib
        .record_outcome(kv.as_ref(), "support", 3, &huge)
        .await
        .unwrap();
    assert_eq!(
        (s.calls, s.tokens_in, s.cost_micros, s.latency_ms_total),
        (2, u64::MAX, u64::MAX, u64::MAX)
    );
    // A corrupt record is an error naming it.
    kv.kv_set(
        STATS_NAMESPACE,
        "support@1",
        &json!({"version": 1, "calls": "many"}),
    )
    .await
    .unwrap();
    let err = lib.stats(kv.as_ref(), "support").await.unwrap_err();
    assert!(err.to_string().contains("statistics 'support@1'"), "{err}");
}

#[tokio::test]
async fn the_library_round_trips_through_json_and_a_kv_store() {
    let mut lib = ab_library();
    lib.activate("support", 3).unwrap();
    lib.set_split("support", &[(2, 1), (3, 3)]).unwrap();
    lib.put(
        "other",
        PromptContent::system("S").with_user("U").with_variant(
            "anthropic/*",
            Variant {
                system: Some("claude".into()),
                user: None,
            },
        ),
        VersionMeta::new("ana", "with a variant"),
    )
    .unwrap();

    let back = PromptLibrary::from_json(lib.to_json()).unwrap();
    assert_eq!(back, lib);

    let kv = MapKv::default();
    lib.save_to(&kv).await.unwrap();
    let keys: Vec<String> = kv
        .kv_list(PROMPTS_NAMESPACE)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["other", "support"]);
    let loaded = PromptLibrary::load_from(&kv).await.unwrap();
    assert_eq!(loaded, lib);
    assert_eq!(
        PromptLibrary::load_from(&MapKv::default()).await.unwrap(),
        PromptLibrary::new()
    );

    // Tampered data is refused, saying what is wrong.
    let mut stored = kv
        .kv_get(PROMPTS_NAMESPACE, "support")
        .await
        .unwrap()
        .unwrap();
    stored["versions"][0]["content"]["system"] = json!("changed behind our back");
    kv.kv_set(PROMPTS_NAMESPACE, "support", &stored)
        .await
        .unwrap();
    let err = PromptLibrary::load_from(&kv).await.unwrap_err();
    assert!(
        err.to_string().contains("version 1's hash does not match"),
        "{err}"
    );
    let mut stored = lib.to_json();
    stored["prompts"]["support"]["active"] = json!(7);
    let err = serde_json::from_value::<PromptLibrary>(stored.clone()).unwrap_err();
    assert!(
        err.to_string().contains("has no version 7"),
        "serde checks too: {err}"
    );
    assert!(matches!(
        PromptLibrary::from_json(stored),
        Err(PromptError::NoVersion { version: 7, .. })
    ));
    let mut stored = lib.to_json();
    stored["prompts"]["support"]["split"] = json!([{"version": 2, "weight": 0}]);
    assert!(matches!(
        PromptLibrary::from_json(stored),
        Err(PromptError::InvalidSplit { .. })
    ));
    kv.kv_set(
        PROMPTS_NAMESPACE,
        "support",
        &lib.to_json()["prompts"]["other"],
    )
    .await
    .unwrap();
    let err = PromptLibrary::load_from(&kv).await.unwrap_err();
    assert!(
        err.to_string().contains("it holds the prompt 'other'"),
        "{err}"
    );
    kv.kv_set(PROMPTS_NAMESPACE, "support", &json!("not a prompt"))
        .await
        .unwrap();
    assert!(matches!(
        PromptLibrary::load_from(&kv).await,
        Err(PromptError::Corrupt { .. })
    ));
}

/// A fresh folder under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "flowbot-prompts-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn prompts_load_from_a_folder_of_toml_files() {
    let dir = TempDir::new("load");
    dir.write(
        "support.toml",
        r#"
author = "ana"
comment = "first cut"
system = """
You are {{ vars.bot }}.
"""
user = "{{ message.text }}"

[variants."anthropic/*"]
system = "You are {{ vars.bot }}, answering briefly."
"#,
    );
    dir.write("greet.toml", "system = \"Hello {{ session.name }}!\"\n");
    dir.write("README.md", "not a prompt");
    let mut lib = PromptLibrary::new();
    let loaded = lib.load_dir(&dir.0).unwrap();
    let summary: Vec<(String, u32, bool)> = loaded
        .into_iter()
        .map(|l| (l.name, l.version, l.created))
        .collect();
    assert_eq!(
        summary,
        [("greet".into(), 1, true), ("support".into(), 1, true)]
    );
    let v = lib.get("support").unwrap().version(1).unwrap();
    assert_eq!(v.meta, VersionMeta::new("ana", "first cut"));
    let r = lib
        .render("support", "anthropic/claude-haiku-4-5", None, &context())
        .unwrap();
    assert_eq!(
        (r.system.as_str(), r.user.as_deref()),
        (
            "You are Flo, answering briefly.",
            Some("Can I return order 1234?")
        )
    );

    // Loading again changes nothing; an edited file becomes the next, active version.
    assert!(lib.load_dir(&dir.0).unwrap().iter().all(|l| !l.created));
    dir.write("greet.toml", "system = \"Hi {{ session.name }}!\"\n");
    let loaded = lib.load_dir(&dir.0).unwrap();
    assert_eq!((loaded[0].version, loaded[0].created), (2, true));
    assert_eq!(
        lib.render("greet", "m", None, &context()).unwrap().system,
        "Hi Ana!"
    );
    assert_eq!(lib.rollback("greet").unwrap(), 1);

    // Bad files: nothing changes, and the error names the file.
    let before = lib.clone();
    dir.write("greet.toml", "system = \"Hey {{ session.name }}!\"\n");
    dir.write("typo.toml", "sytem = \"x\"\n");
    let err = lib.load_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, PromptError::File { path, message } if path.ends_with("typo.toml") && message.contains("sytem")),
        "{err}"
    );
    assert_eq!(lib, before, "either every file loads or nothing changes");
    dir.write("typo.toml", "system = \"{% if %}\"\n");
    let err = lib.load_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, PromptError::Syntax { template, .. } if template == "typo@v1/system"),
        "{err}"
    );
    std::fs::remove_file(dir.0.join("typo.toml")).unwrap();
    dir.write("bad name.toml", "system = \"x\"\n");
    let err = lib.load_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, PromptError::File { path, .. } if path.ends_with("bad name.toml")),
        "{err}"
    );
    assert_eq!(lib, before);
    let err = lib.load_dir(&dir.0.join("missing")).unwrap_err();
    assert!(matches!(err, PromptError::File { .. }));
}
