//! The Discord channel over the gateway, through the server, against a local Discord API and
//! gateway: the identify payload (token, intents, shard), heartbeats, messages, slash
//! commands, clicks and select menus (acknowledged through the callback route), member joins
//! answered in the server's system channel, reactions, the bot's own messages and empty ones
//! left alone; then the faults: frames that are not JSON, malformed and unknown dispatches,
//! unknown opcodes (counted, the session carries on), a reconnect request, a zombie
//! connection, an invalid session, and a refused token (the shard stops, with a metric). And
//! on PostgreSQL, two server processes sharing two shards: killing the holder moves its
//! shards to the other within the lease's bounds.

mod common;
#[path = "discord/fake.rs"]
mod fake;
mod harness;

use std::time::Duration;

use fake::{APP_ID, BOT_TOKEN, FakeDiscord, SYSTEM_CHANNEL, message};
use flowbot_server::config::DiscordSettings;
use harness::{Server, start_with};
use serde_json::json;

/// Channels of the server (ids as Discord gives them: numeric snowflakes).
const C1: &str = "1200000000000000001";
const C2: &str = "1200000000000000002";
const C3: &str = "1200000000000000003";
const F1: &str = "1200000000000000004";
const L1: &str = "1200000000000000005";

const RULES: &str = r#"
[[rule]]
name = "echo"
when = { command = "echo <text...>" }
then = [{ reply = "{{ args.text }}" }]

[[rule]]
name = "welcome"
when = { event = "member_joined" }
then = [{ reply = "Welcome, {{ message.user_name }}!" }]

[[rule]]
name = "thanks"
when = { event = "reaction" }
then = [{ reply = "Thanks for the {{ message.emoji }}" }]

[[rule]]
name = "pick"
when = { command = "pick" }
then = [{ reply = "Which?" }]

[[rule]]
name = "picked"
when = { event = "button" }
then = [{ reply = "picked {{ message.value }}" }]

[[rule]]
name = "edited"
when = { event = "message_edited" }
then = [{ reply = "{{ message.id }} now reads: {{ message.text }}" }]
"#;

async fn server(discord: &FakeDiscord, rules: &common::TempDir) -> Server {
    std::fs::write(rules.0.join("bot.toml"), RULES).expect("rules");
    let (api, dir) = (discord.api(), rules.0.clone());
    let s = start_with(move |c| {
        c.rules.dir = Some(dir);
        let entry = DiscordSettings::gateway_only(BOT_TOKEN.into(), APP_ID.into(), api);
        c.discord.insert("dg".into(), entry);
    })
    .await;
    discord.wait_connected(0).await;
    s
}

/// Wait until `cond` holds (20 s at most).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    common::found(what, || cond().then_some(()), || ()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_session_carries_messages_commands_joins_and_reactions() {
    let discord = FakeDiscord::start().await;
    let rules = common::TempDir::new("flowbot-discord-gateway");
    let server = server(&discord, &rules).await;

    // Identify: the token, the default intents, one shard of one.
    let identify = &discord.identifies()[0];
    assert_eq!(identify["token"], BOT_TOKEN);
    assert_eq!(
        identify["intents"],
        1 | 1 << 1 | 1 << 9 | 1 << 10 | 1 << 12 | 1 << 13 | 1 << 15
    );
    assert_eq!(identify["shard"], json!([0, 1]));
    until("two heartbeats", || discord.heartbeats() >= 2).await;

    // A message, answered as a reply to it.
    discord.dispatch(0, "MESSAGE_CREATE", message("7001", C1, "/echo hi there"));
    let reply = discord.wait_for(C1, "hi there").await;
    assert_eq!(reply.via, "channel");
    assert_eq!(reply.body["message_reference"]["message_id"], "7001");

    // The bot's own message is not an event (no echo of an echo).
    let mut own = message("7002", C1, "/echo loop");
    own["author"] = fake::bot_user();
    discord.dispatch(0, "MESSAGE_CREATE", own);
    // Without the Message Content intent a server message has no text: nothing to answer.
    discord.dispatch(0, "MESSAGE_CREATE", message("7003", C1, ""));

    // An edit is an event of its own (its text, not a command run again); an update that
    // edits nothing (an embed resolved) is not.
    let mut edit = message("7001", C1, "/echo hi again");
    edit["edited_timestamp"] = "2026-11-22T10:00:05.000000+00:00".into();
    discord.dispatch(0, "MESSAGE_UPDATE", edit);
    discord
        .wait_for(C1, "msg:7001 now reads: /echo hi again")
        .await;
    discord.dispatch(0, "MESSAGE_UPDATE", message("7001", C1, "/echo hi again"));
    // A later update of the edited message (an embed resolved) keeps its edit time: not an
    // edit again.
    let mut embed = message("7001", C1, "/echo hi again");
    embed["edited_timestamp"] = "2026-11-22T10:00:05.000000+00:00".into();
    embed["embeds"] = json!([{"type": "link", "url": "https://example.com"}]);
    discord.dispatch(0, "MESSAGE_UPDATE", embed);

    // A slash command over the gateway: acknowledged with a deferred response (type 5), and
    // the reply replaces it.
    let (id, token) = discord.interaction(C2);
    discord.dispatch(
        0,
        "INTERACTION_CREATE",
        fake::command(&id, &token, C2, "pick", &[]),
    );
    let ask = discord.wait_for(C2, "Which?").await;
    assert_eq!(ask.via, "original");
    assert!(discord.callbacks().contains(&(id, 5)));
    let (id, token) = discord.interaction(C2);
    discord.dispatch(0, "INTERACTION_CREATE", fake::click(&id, &token, C2, "a"));
    assert_eq!(discord.wait_for(C2, "picked a").await.via, "followup");
    assert!(discord.callbacks().contains(&(id, 6)));
    // A select menu: the options chosen.
    let (id, token) = discord.interaction(C2);
    let mut select = fake::click(&id, &token, C2, "menu");
    select["data"] = json!({"custom_id": "menu", "component_type": 3, "values": ["b", "c"]});
    discord.dispatch(0, "INTERACTION_CREATE", select);
    discord.wait_for(C2, "picked b,c").await;

    // A member joins: welcomed in the server's system channel (from GUILD_CREATE).
    discord.dispatch(
        0,
        "GUILD_MEMBER_ADD",
        fake::member_add(fake::user("43", "bob", None)),
    );
    discord.wait_for(SYSTEM_CHANNEL, "Welcome, bob!").await;

    // A reaction, with the member who reacted.
    discord.dispatch(0, "MESSAGE_REACTION_ADD", fake::reaction(C3, "7001", "👍"));
    discord.wait_for(C3, "Thanks for the 👍").await;

    assert!(
        discord
            .sent_to(C1)
            .iter()
            .all(|s| s.body["content"] != "loop"),
        "{:?}",
        discord.sent_to(C1)
    );
    let metrics = common::metrics(&server.base).await;
    assert!(
        metrics.contains("flowbot_channel_ignored_total{channel=\"dg\",reason=\"bot message\"} 1")
            && metrics.contains(
                "flowbot_channel_ignored_total{channel=\"dg\",reason=\"message without content\"} 1"
            )
            && metrics.contains(
                "flowbot_channel_ignored_total{channel=\"dg\",reason=\"message update without an edit\"} 2"
            ),
        "{metrics}"
    );
    // Every dispatch above is one Discord sends: serenity's model decodes each of them.
    assert!(!metrics.contains("reason=\"malformed"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_faults_are_counted_and_survived() {
    let discord = FakeDiscord::start().await;
    let rules = common::TempDir::new("flowbot-discord-gateway-faults");
    let server = server(&discord, &rules).await;
    let mut n = 0;
    let mut echo = |text: &str| {
        n += 1;
        discord.dispatch(
            0,
            "MESSAGE_CREATE",
            message(&format!("{}", 8000 + n), F1, &format!("/echo {text}")),
        );
    };

    // Bad input on a live session: counted, and the session carries on.
    discord.send_raw(0, "{not json");
    discord.dispatch(
        0,
        "MESSAGE_CREATE",
        json!({"id": "8100", "channel_id": F1, "content": "no author"}),
    );
    discord.dispatch(0, "BRAND_NEW_EVENT", json!({"x": 1}));
    discord.send_raw(0, r#"{"op": 99, "d": null}"#);
    echo("still here");
    discord.wait_for(F1, "still here").await;
    let metrics = common::metrics(&server.base).await;
    for reason in [
        "gateway frame not JSON",
        "malformed MESSAGE_CREATE",
        "event BRAND_NEW_EVENT",
        "gateway unknown opcode",
    ] {
        assert!(
            metrics.contains(&format!(
                "flowbot_channel_ignored_total{{channel=\"dg\",reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    assert_eq!(discord.identifies().len(), 1);
    assert!(discord.resumes().is_empty());

    // Discord asks for a reconnect (op 7): the session is resumed from the last event, and
    // what was dispatched meanwhile arrives.
    discord.send_raw(0, r#"{"op": 7, "d": null}"#);
    echo("after reconnect");
    discord.wait_for(F1, "after reconnect").await;
    until("a resume", || discord.resumes().len() == 1).await;
    let (session, seq) = discord.resumes()[0].clone();
    assert_eq!(session, "session-1");
    // READY 1, GUILD_CREATE 2, the three dispatches above 3-5: the message sent after the
    // request (6) was not handled on the old connection.
    assert_eq!(seq, Some(5), "resumed from the last event handled");

    // Heartbeats go unacknowledged: the zombie connection is closed and resumed.
    discord.silence_heartbeats(true);
    until("a resume after a missed ACK", || {
        discord.resumes().len() == 2
    })
    .await;
    discord.silence_heartbeats(false);
    echo("after zombie");
    discord.wait_for(F1, "after zombie").await;

    // The session is invalidated (op 9, not resumable): the shard identifies anew.
    discord.send_raw(0, r#"{"op": 9, "d": false}"#);
    until("a second identify", || discord.identifies().len() == 2).await;
    discord.wait_connected(0).await;
    echo("new session");
    discord.wait_for(F1, "new session").await;

    // Each message was answered once.
    for text in [
        "still here",
        "after reconnect",
        "after zombie",
        "new session",
    ] {
        let n = discord
            .sent_to(F1)
            .iter()
            .filter(|s| s.body["content"] == text)
            .count();
        assert_eq!(n, 1, "{text} answered {n} times");
    }

    // Discord refuses the token (4004): the shard stops instead of retrying, counting an API
    // error once it has decided (so the count is the event to wait for).
    let api_errors = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("flowbot_channel_api_errors_total{channel=\"dg\"} "))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let before = api_errors(&common::metrics(&server.base).await).expect("the counter");
    discord.close(0, 4004);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::metrics(&server.base).await;
        if api_errors(&metrics) > Some(before) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until("the connection closed", || !discord.connected(0)).await;
    assert_eq!(discord.identifies().len(), 2, "no new identify");
    assert_eq!(discord.resumes().len(), 2, "no resume");
    server.stop().await;
}

/// An application reads Discord's own fields: each event the gateway stores keeps Discord's
/// JSON, which `discord::typed` gives back as serenity's event, and FlowBot's fields are
/// built from the same typed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_get_serenity_events() {
    use flowbot_channels::discord::{Discord, model, typed};
    use flowbot_core::task::{ClaimRequest, DEFAULT_QUEUE, TaskQueue};
    use flowbot_core::{CancellationToken, Event, Inbox, Role, UserId};

    let discord = FakeDiscord::start().await;
    let dir = common::TempDir::new("flowbot-discord-typed");
    let store = std::sync::Arc::new(
        flowbot_store::SqliteStore::open_in_dir(&dir.0)
            .await
            .expect("store"),
    );
    let settings = DiscordSettings::gateway_only(BOT_TOKEN.into(), APP_ID.into(), discord.api());
    let (_, channel) = Discord::new(
        store.clone(),
        settings.channel_config("dg").expect("settings"),
    )
    .expect("discord");
    let listener = channel.listener().expect("the gateway").clone();
    let (inbox, _events) = Inbox::new(8);
    let shutdown = CancellationToken::new();
    let listening = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { listener.listen(inbox, shutdown).await }
    });
    discord.wait_connected(0).await;

    // A message with a file and a mention, a slash command, a click, a join and a reaction.
    let mut posted = message("7101", C1, "see the chart, <@43>");
    posted["attachments"] = json!([{"id": "1300000000000000010", "filename": "chart.png",
        "size": 2048, "url": "https://cdn.discordapp.com/attachments/1/2/chart.png",
        "proxy_url": "https://media.discordapp.net/attachments/1/2/chart.png",
        "content_type": "image/png", "height": 64, "width": 64}]);
    posted["mentions"] = json!([fake::user("43", "bob", None)]);
    discord.dispatch(0, "MESSAGE_CREATE", posted);
    let (id, token) = discord.interaction(C2);
    discord.dispatch(
        0,
        "INTERACTION_CREATE",
        fake::command(&id, &token, C2, "echo", &[("text", "typed")]),
    );
    let (click_id, click_token) = discord.interaction(C2);
    discord.dispatch(
        0,
        "INTERACTION_CREATE",
        fake::click(&click_id, &click_token, C2, "approve"),
    );
    discord.dispatch(
        0,
        "GUILD_MEMBER_ADD",
        fake::member_add(fake::user("43", "bob", None)),
    );
    discord.dispatch(0, "MESSAGE_REACTION_ADD", fake::reaction(C3, "7101", "👍"));

    // The stored events, as a worker of the application claims (and finishes) them: the
    // click waits behind the command, in the same conversation's lane.
    let kinds = [flowbot_core::INBOUND_TASK.to_owned()];
    let mut wake = store.wake_signal();
    let mut stored: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stored.len() < 5 {
        let claimed = store
            .claim(&ClaimRequest {
                worker: "app",
                queue: DEFAULT_QUEUE,
                kinds: &kinds,
                limit: 10,
                lease: Duration::from_secs(60),
            })
            .await
            .expect("claim");
        if claimed.is_empty() {
            // Nothing to claim yet: wait for the next task stored.
            tokio::time::timeout_at(deadline, wake.changed())
                .await
                .unwrap_or_else(|_| panic!("events stored: {stored:?}"))
                .expect("the store's wake signal");
            continue;
        }
        stored.extend(
            claimed
                .iter()
                .map(|t| serde_json::from_str::<Event>(&t.payload).expect("an event")),
        );
        let ids: Vec<_> = claimed.iter().map(|t| t.id).collect();
        store.complete("app", &ids).await.expect("complete");
    }
    let (mut message, mut command, mut click, mut join, mut reaction) =
        (None, None, None, None, None);
    for event in &stored {
        let slot = match event {
            Event::Message(m) if m.text.starts_with('/') => &mut command,
            Event::Message(_) => &mut message,
            Event::Interaction(_) => &mut click,
            Event::MemberJoined { .. } => &mut join,
            Event::Reaction { .. } => &mut reaction,
            other => panic!("not an event sent: {other:?}"),
        };
        assert!(slot.replace(event).is_none(), "twice: {event:?}");
    }
    let (message, command) = (message.expect("message"), command.expect("command"));
    let (click, join, reaction) = (
        click.expect("click"),
        join.expect("join"),
        reaction.expect("reaction"),
    );

    // The message: serenity's MESSAGE_CREATE, and FlowBot's fields from it.
    match typed(message) {
        Some(Ok(model::event::Event::MessageCreate(m))) => {
            let m = m.message;
            assert_eq!(m.id.get(), 7101);
            assert_eq!(m.channel_id.to_string(), C1);
            assert_eq!(m.author.name, "ada");
            assert_eq!(m.author.global_name.as_deref(), Some("Ada"));
            assert_eq!(m.attachments[0].filename, "chart.png");
            assert_eq!(m.mentions[0].id.get(), 43);
            assert_eq!(
                m.guild_id.map(|g| g.to_string()).as_deref(),
                Some(fake::GUILD)
            );
        }
        other => panic!("not a MESSAGE_CREATE: {other:?}"),
    }
    let m = message.as_message().expect("message");
    assert_eq!(m.id.as_str(), "msg:7101");
    assert_eq!(m.conversation.as_str(), C1);
    assert_eq!(m.sender.id, UserId(fake::ADA.into()));
    assert_eq!(m.sender.name.as_deref(), Some("Ada"));
    assert_eq!(m.mentions, [UserId("43".into())]);
    let file = &m.attachments[0];
    assert_eq!(
        (file.name.as_deref(), file.mime.as_deref(), file.size),
        (Some("chart.png"), Some("image/png"), Some(2048))
    );

    // The command: serenity's INTERACTION_CREATE with its command data and member.
    match typed(command) {
        Some(Ok(model::event::Event::InteractionCreate(i))) => match i.interaction {
            model::application::Interaction::Command(c) => {
                assert_eq!(c.data.name, "echo");
                assert_eq!(c.token, token);
                let member = c.member.expect("a member");
                assert!(
                    member
                        .permissions
                        .is_some_and(|p| p.contains(model::Permissions::ADMINISTRATOR))
                );
                assert_eq!(member.user.name, "ada");
            }
            other => panic!("not a command: {other:?}"),
        },
        other => panic!("not an INTERACTION_CREATE: {other:?}"),
    }
    let c = command.as_message().expect("command");
    assert_eq!(c.text, "/echo typed");
    assert_eq!(c.conversation.as_str(), C2);
    assert!(c.sender.roles.contains(&Role::Admin), "{:?}", c.sender);

    // The click: serenity's INTERACTION_CREATE with the component clicked.
    match typed(click) {
        Some(Ok(model::event::Event::InteractionCreate(i))) => match i.interaction {
            model::application::Interaction::Component(c) => {
                assert_eq!(c.data.custom_id, "approve");
                assert_eq!(c.id.to_string(), click_id);
                assert_eq!(c.token, click_token);
                assert_eq!(c.message.author.id.to_string(), fake::BOT_USER);
            }
            other => panic!("not a component: {other:?}"),
        },
        other => panic!("not an INTERACTION_CREATE: {other:?}"),
    }
    // The join: serenity's GUILD_MEMBER_ADD, the member and the server.
    match typed(join) {
        Some(Ok(model::event::Event::GuildMemberAdd(m))) => {
            assert_eq!(m.member.user.id.get(), 43);
            assert_eq!(m.member.user.name, "bob");
            assert_eq!(m.member.guild_id.to_string(), fake::GUILD);
        }
        other => panic!("not a GUILD_MEMBER_ADD: {other:?}"),
    }
    // The reaction: serenity's MESSAGE_REACTION_ADD with its emoji and member.
    match typed(reaction) {
        Some(Ok(model::event::Event::ReactionAdd(r))) => {
            let r = r.reaction;
            assert_eq!(r.emoji, model::channel::ReactionType::Unicode("👍".into()));
            assert_eq!(r.message_id.get(), 7101);
            assert_eq!(r.channel_id.to_string(), C3);
            assert_eq!(r.member.map(|m| m.user.name).as_deref(), Some("ada"));
        }
        other => panic!("not a MESSAGE_REACTION_ADD: {other:?}"),
    }

    shutdown.cancel();
    listening.await.expect("joined").expect("listened");
}

/// The pid holding lease `name`.
async fn holder(url: &str, schema: &str, name: &str) -> Option<u32> {
    common::lease_holder(url, schema, name)
        .await
        .map(|(pid, _)| pid)
}

/// How many times shard `shard` (of two) identified.
fn identified(discord: &FakeDiscord, shard: u32) -> usize {
    discord
        .identifies()
        .iter()
        .filter(|i| i["shard"] == json!([shard, 2]))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_move_to_another_server_when_their_holder_is_killed() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let discord = FakeDiscord::start().await;
    let dir = common::TempDir::new("flowbot-discord-lease");
    let schema = format!("dg_{}", uuid::Uuid::new_v4().simple());
    let extra = [
        ("FLOWBOT_DISCORD__DG__BOT_TOKEN", BOT_TOKEN.into()),
        (
            "FLOWBOT_DISCORD__DG__APPLICATION_ID",
            format!("\"{APP_ID}\""),
        ),
        (
            "FLOWBOT_DISCORD__DG__API_BASE",
            format!("\"{}\"", discord.api()),
        ),
        ("FLOWBOT_DISCORD__DG__GATEWAY_SHARDS", "2".into()),
        ("FLOWBOT_DISCORD__DG__LEASE_TTL_SECS", "3".into()),
    ];
    let mut servers = common::start_servers(&["s1", "s2"], &dir.0, (&url, &schema), &extra).await;
    // Each shard is connected once, by one of them, and answers.
    for shard in [0, 1] {
        discord.wait_connected(shard).await;
        discord.dispatch(
            shard,
            "MESSAGE_CREATE",
            message(
                &format!("{}", 9100 + shard),
                L1,
                &format!("/echo before {shard}"),
            ),
        );
        discord.wait_for(L1, &format!("before {shard}")).await;
        assert_eq!(identified(&discord, shard), 1);
    }
    let lease = |shard: u32| flowbot_channels::discord::gateway::lease_name("dg", shard);
    let pid = holder(&url, &schema, &lease(0)).await.expect("a holder");
    assert!(servers.contains_key(&pid), "the holder is one of ours");
    let moved: Vec<u32> = {
        let mut moved = vec![0];
        if holder(&url, &schema, &lease(1)).await == Some(pid) {
            moved.push(1);
        }
        moved
    };

    // Kill it: no release, no close frame. The other server takes its shards over.
    let (_, mut victim) = servers.remove(&pid).expect("holder");
    victim.start_kill().expect("SIGKILL");
    victim.wait().await.expect("reaped");
    let killed = tokio::time::Instant::now();
    for &shard in &moved {
        until("the shard identified by the other server", || {
            identified(&discord, shard) == 2 && discord.connected(shard)
        })
        .await;
    }
    let took = killed.elapsed();
    // ttl 3 s, renewed every second: taken over within about 4 s.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let survivor = *servers.keys().next().expect("survivor");
    for shard in [0, 1] {
        assert_eq!(
            holder(&url, &schema, &lease(shard)).await,
            Some(survivor),
            "shard {shard}"
        );
        discord.dispatch(
            shard,
            "MESSAGE_CREATE",
            message(
                &format!("{}", 9200 + shard),
                L1,
                &format!("/echo after {shard}"),
            ),
        );
        discord.wait_for(L1, &format!("after {shard}")).await;
    }
    for text in ["before 0", "before 1", "after 0", "after 1"] {
        let n = discord
            .sent_to(L1)
            .iter()
            .filter(|s| s.body["content"] == text)
            .count();
        assert_eq!(n, 1, "{text} answered {n} times");
    }
    drop(servers);
    common::drop_schema(&url, &schema).await;
}
