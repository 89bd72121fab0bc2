//! Conversations, messages, sessions, key-value data and the bus.

use super::*;

/// Sessions are saved, loaded (with their version) and deleted.
pub async fn sessions_round_trip(store: Arc<dyn Store>) {
    let key = SessionKey {
        channel: "web".into(),
        conversation: "c1".into(),
        user: "u1".into(),
    };
    assert!(store.load_session(&key).await.expect("load").is_none());
    let mut s = Session::new(key.clone());
    s.vars.insert("name".into(), json!("Ada"));
    s.dialog = Some(flowbot_core::DialogState {
        name: "signup".into(),
        step: "email".into(),
        data: Default::default(),
    });
    assert_eq!(store.save_session(&s).await.expect("insert"), 1);
    let loaded = store
        .load_session(&key)
        .await
        .expect("load")
        .expect("saved");
    assert_eq!(loaded.vars["name"], "Ada");
    assert_eq!(loaded.dialog.as_ref().expect("dialog").step, "email");
    assert_eq!(loaded.version, 1);
    // A stale writer is refused.
    let e = store.save_session(&s).await.expect_err("stale insert");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let mut next = loaded.clone();
    next.vars.insert("n".into(), json!(2));
    assert_eq!(store.save_session(&next).await.expect("update"), 2);
    let e = store.save_session(&next).await.expect_err("stale update");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(store.delete_session(&key).await.expect("delete"));
    assert!(store.load_session(&key).await.expect("load").is_none());
}

/// Inbound messages are stored once (a redelivery is not fresh), outbound ones beside them, and listed by conversation.
pub async fn messages_round_trip(store: Arc<dyn Store>) {
    let mut m = Message::text("web", "c1", Sender::user("u1"), "hello");
    m.id = MessageId::from("platform-1");
    assert!(store.save_inbound(&m).await.expect("save"));
    assert!(
        !store.save_inbound(&m).await.expect("redelivered"),
        "same platform id is stored once"
    );
    let reply = Outbound::text("hi there").to(Target {
        channel: "web".into(),
        conversation: "c1".into(),
        thread: None,
    });
    store.save_outbound(&reply).await.expect("save outbound");
    let e = store
        .save_outbound(&Outbound::text("nowhere"))
        .await
        .expect_err("no target");
    assert!(matches!(e, StoreError::Invalid(_)));
    for i in 0..5 {
        let m = Message::text("web", "c2", Sender::user("u2"), format!("m{i}"));
        store.save_inbound(&m).await.expect("save");
    }
    let page = store
        .list_messages(&"web".into(), &"c1".into(), None, 10)
        .await
        .expect("list");
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].direction, Direction::Inbound);
    assert_eq!(page.items[0].message_id, "platform-1");
    assert_eq!(page.items[0].body["text"], "hello");
    assert_eq!(page.items[1].direction, Direction::Outbound);
    assert_eq!(page.items[1].text, "hi there");
    assert!(page.next_cursor.is_none());

    // Pagination walks every message once, in order.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_messages(&"web".into(), &"c2".into(), cursor.as_deref(), 2)
            .await
            .expect("page");
        seen.extend(page.items.iter().map(|m| m.text.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, vec!["m0", "m1", "m2", "m3", "m4"]);
    let convs = store
        .list_conversations(None, 1)
        .await
        .expect("conversations");
    assert_eq!(convs.items.len(), 1);
    let rest = store
        .list_conversations(convs.next_cursor.as_deref(), 10)
        .await
        .expect("conversations");
    assert_eq!(rest.items.len(), 1);
    let total: i64 = convs
        .items
        .iter()
        .chain(rest.items.iter())
        .map(|c| c.message_count)
        .sum();
    assert_eq!(total, 7);

    for bad in ["garbage", "7b7d", "00"] {
        let e = store
            .list_messages(&"web".into(), &"c1".into(), Some(bad), 10)
            .await
            .expect_err(bad);
        assert!(
            matches!(&e, StoreError::Invalid(m) if m.contains("malformed cursor")),
            "{e}"
        );
        let e = store
            .list_conversations(Some(bad), 10)
            .await
            .expect_err(bad);
        assert!(matches!(e, StoreError::Invalid(_)));
    }
}

/// Messages saved at the same moment (which a store may write together): a redelivered
/// message is new exactly once, every other message is stored once and in its conversation's
/// count, and a conversation's history keeps each writer's order.
pub async fn messages_saved_concurrently(store: Arc<dyn Store>) {
    let mut same = Message::text("web", "dup", Sender::user("u"), "again");
    same.id = MessageId::from("redelivered");
    let mut saves = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (store, m) = (store.clone(), same.clone());
        saves.spawn(async move { store.save_inbound(&m).await.expect("save") });
    }
    let mut new = 0;
    while let Some(r) = saves.join_next().await {
        new += usize::from(r.expect("join"));
    }
    assert_eq!(new, 1, "one of 20 concurrent saves of one message is new");

    // Four writers, each with its own conversation plus a shared one, interleaved with
    // replies: each writer's messages arrive in its order.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let store = store.clone();
        writers.spawn(async move {
            for i in 0..25 {
                let conv = if i % 2 == 0 {
                    format!("own{w}")
                } else {
                    "shared".into()
                };
                let m = Message::text(
                    "web",
                    conv.as_str(),
                    Sender::user(format!("u{w}")),
                    format!("{w}:{i}"),
                );
                assert!(store.save_inbound(&m).await.expect("save"));
                let reply = Outbound::text(format!("re {w}:{i}")).to(Target {
                    channel: "web".into(),
                    conversation: conv.as_str().into(),
                    thread: None,
                });
                store.save_outbound(&reply).await.expect("save outbound");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_conversations(cursor.as_deref(), 100)
            .await
            .expect("conversations");
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for conv in ["own0", "own1", "own2", "own3", "shared", "dup"] {
        let c = all
            .iter()
            .find(|c| c.conversation.as_str() == conv)
            .unwrap_or_else(|| panic!("conversation {conv} listed"));
        let expected = match conv {
            "dup" => 1,
            "shared" => 4 * 12 * 2,
            _ => 13 * 2,
        };
        assert_eq!(c.message_count, expected, "count of {conv}");
        let page = store
            .list_messages(&"web".into(), &conv.into(), None, 200)
            .await
            .expect("history");
        assert_eq!(page.items.len() as i64, expected, "history of {conv}");
        for w in 0..4 {
            let mine: Vec<&str> = page
                .items
                .iter()
                .map(|m| m.text.trim_start_matches("re "))
                .filter(|t| t.starts_with(&format!("{w}:")))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort_by_key(|t| t[2..].parse::<u32>().expect("number"));
            assert_eq!(mine, sorted, "writer {w}'s order in {conv}");
        }
    }
}

/// Key-value data is set, read, listed by namespace and deleted.
pub async fn kv_round_trip(store: Arc<dyn Store>) {
    assert_eq!(store.kv_get("ns", "k").await.expect("get"), None);
    store
        .kv_set("ns", "k", &json!({"a": [1, 2]}))
        .await
        .expect("set");
    store.kv_set("other", "k", &json!(1)).await.expect("set");
    assert_eq!(
        store.kv_get("ns", "k").await.expect("get"),
        Some(json!({"a": [1, 2]}))
    );
    store
        .kv_set("ns", "k", &json!("replaced"))
        .await
        .expect("set");
    assert_eq!(
        store.kv_get("ns", "k").await.expect("get"),
        Some(json!("replaced"))
    );
    store.kv_set("ns", "b", &json!(2)).await.expect("set");
    store.kv_set("ns", "a", &json!(1)).await.expect("set");
    assert_eq!(
        store.kv_list("ns").await.expect("list"),
        [
            ("a".to_owned(), json!(1)),
            ("b".to_owned(), json!(2)),
            ("k".to_owned(), json!("replaced"))
        ]
    );
    assert!(store.kv_list("empty").await.expect("list").is_empty());
    assert!(store.kv_delete("ns", "k").await.expect("delete"));
    assert!(!store.kv_delete("ns", "k").await.expect("delete"));
    assert_eq!(
        store.kv_get("other", "k").await.expect("get"),
        Some(json!(1))
    );
}

/// The bus: what one connection publishes, every subscriber (on every connection) gets once.
pub async fn bus_reaches_every_subscriber(store: Arc<dyn Store>, other: Arc<dyn Store>) {
    let mut a = store.subscribe();
    let mut b = other.subscribe();
    tokio::time::sleep(Duration::from_millis(200)).await; // LISTEN is up
    store
        .publish("web:deliver", r#"{"text":"hi"}"#)
        .await
        .expect("publish");
    for rx in [&mut a, &mut b] {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(&*m.topic, "web:deliver");
        assert_eq!(&*m.payload, r#"{"text":"hi"}"#);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err(),
            "exactly once"
        );
    }
    let e = store
        .publish("t", &"x".repeat(8000))
        .await
        .expect_err("too large");
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("over the limit")),
        "{e}"
    );
}
