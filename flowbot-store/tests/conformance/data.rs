//! Conversations, messages, sessions, key-value data and the bus.

use super::*;

pub(super) async fn sessions_round_trip(store: Arc<dyn Store>) {
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

pub(super) async fn messages_round_trip(store: Arc<dyn Store>) {
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

pub(super) async fn kv_round_trip(store: Arc<dyn Store>) {
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
pub(super) async fn bus_reaches_every_subscriber(store: Arc<dyn Store>, other: Arc<dyn Store>) {
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
