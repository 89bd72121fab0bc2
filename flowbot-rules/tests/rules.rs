//! The rules engine inside a real bot: in-process channel, SQLite store, the pipeline, the
//! action registry and the rhai sandbox.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::{
    Bot, CancellationToken, Classifier, Event, FailureReply, InProcess, InProcessHandle, Label,
    Message, Role, Sender, Stage, Store, async_trait,
};
use flowbot_rules::{
    CustomCondition, Error, Facts, Plugins, RuleSet, RulesRouter, ScriptLimits, Scripting, Source,
};
use flowbot_store::SqliteStore;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("flowbot-rules-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic classifier: "greeting" when the text says hello, with a confidence
/// that depends on how many times.
struct Hellos;

#[async_trait]
impl Classifier for Hellos {
    async fn classify(&self, text: &str) -> flowbot_core::Result<Vec<Label>> {
        let n = text.to_lowercase().matches("hello").count();
        Ok(vec![Label {
            label: "greeting".into(),
            confidence: (n as f32 * 0.4).min(1.0),
        }])
    }
}

/// A custom condition kind: the text is at least `min` characters long.
struct LongText(usize);

impl CustomCondition for LongText {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        facts.text.chars().count() >= self.0
    }
}

fn plugins() -> Plugins {
    Plugins::default().condition("long_text", |args| {
        args.get("min")
            .and_then(serde_json::Value::as_u64)
            .map(|n| LongText(n as usize))
            .ok_or_else(|| "needs `min`, a whole number".to_owned())
    })
}

type Errors = Arc<Mutex<Vec<String>>>;

struct Running {
    handle: InProcessHandle,
    errors: Errors,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<flowbot_core::Result<()>>,
    router: Arc<RulesRouter>,
    store: Arc<dyn Store>,
    _dir: TempDir,
}

async fn start(rules: &str, plugins: &Plugins) -> Running {
    start_in(TempDir::new(), rules, plugins).await
}

/// Start a bot whose SQLite store lives in `dir` (reused across restarts).
async fn start_in(dir: TempDir, rules: &str, plugins: &Plugins) -> Running {
    let set = RuleSet::compile(&[Source::inline(rules)], plugins).expect("rules compile");
    let router = Arc::new(RulesRouter::new(set).with_classifier(Arc::new(Hellos)));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_dir(&dir.0).await.expect("store"));
    let (channel, handle) = InProcess::channel("local", 64);
    let errors: Errors = Arc::default();
    let seen = errors.clone();
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router_arc(router.clone())
        .on_error(move |e| {
            assert_eq!(e.stage, Stage::Route, "{}", e.error);
            seen.lock().expect("errors").push(e.error.to_string());
        })
        .build()
        .expect("bot");
    let stop = CancellationToken::new();
    let task = tokio::spawn(bot.run(stop.clone()));
    Running {
        handle,
        errors,
        stop,
        task,
        router,
        store,
        _dir: dir,
    }
}

impl Running {
    /// Say `text`, whose handling fails: the sender hears the bot's failure reply.
    async fn fails(&mut self, text: &str) {
        let apology = FailureReply::default().text.expect("an apology by default");
        assert_eq!(self.ask("ada", text).await, apology, "after {text}");
    }

    async fn ask(&mut self, user: &str, text: &str) -> String {
        self.handle.say(user, "room", text).await.expect("say");
        self.reply().await
    }

    async fn reply(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.handle.next_reply())
            .await
            .expect("a reply in time")
            .expect("bot running")
            .text
    }

    /// Waits until `user`'s session in the room is stored in a dialog: the pipeline stores
    /// the session after it delivered the reply.
    async fn in_dialog(&self, user: &str) {
        let key = flowbot_core::SessionKey {
            channel: "local".into(),
            conversation: "room".into(),
            user: user.into(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self
            .store
            .load_session(&key)
            .await
            .expect("load")
            .and_then(|s| s.dialog)
            .is_none()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user}'s session never stored"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn no_reply(&mut self) {
        if let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(300), self.handle.next_reply()).await
        {
            panic!("unexpected reply: {}", r.text);
        }
    }

    async fn stop(self) -> TempDir {
        self.stop.cancel();
        self.task.await.expect("join").expect("bot stopped cleanly");
        self._dir
    }

    async fn ask_full(&mut self, user: &str, text: &str) -> flowbot_core::Outbound {
        self.handle.say(user, "room", text).await.expect("say");
        tokio::time::timeout(Duration::from_secs(10), self.handle.next_reply())
            .await
            .expect("a reply in time")
            .expect("bot running")
    }
}

const RULES: &str = r#"
[vars]
bot = "Flo"

[[rule]]
name = "help"
priority = 100
when = { command = "help" }
then = [{ reply = "I am {{ vars.bot }}. Try /echo, /add, /remember." }]

[[rule]]
name = "echo"
when = { command = "echo <text...>" }
then = [{ reply = "{{ args.text }}" }]

[[rule]]
name = "add"
when = { command = "add <a:int> <b:int>" }
then = [{ reply = "{{ args.a + args.b }}" }]

[[rule]]
name = "remember"
when = { command = "remember <key> <value...>" }
then = [
  { call = { action = "kv.set", input = { key = "{{ args.key }}", value = "{{ args.value }}" } } },
  { call = { action = "kv.get", input = { key = "{{ args.key }}" }, save_as = "last" } },
  { set = { var = "remembered", value = "{{ args.key }}" } },
  { reply = "Stored {{ session.last.value }} under {{ session.remembered }}." },
]

[[rule]]
name = "unremember"
when = { command = "unremember <key>" }
then = [
  { call = { action = "kv.delete", input = { key = "{{ args.key }}" }, save_as = "del" } },
  { reply = "{% if session.del.existed %}deleted{% else %}absent{% endif %}" },
]

[[rule]]
name = "sneaky"
when = { command = "sneaky" }
then = [{ call = { action = "kv.set", input = { namespace = "flowbot.rules", key = "x", value = 1 } } }]

[[rule]]
name = "forget"
when = { command = "forget" }
then = [{ clear = "remembered" }, { reply = "{% if session.remembered is undefined %}forgotten{% endif %}" }]

[[rule]]
name = "order"
when = { regex = '(?i)order\s+#(?P<number>\d+)' }
then = [{ reply = "Looking up order {{ captures.number }} (matched '{{ captures[\"0\"] }}')." }]

[[rule]]
name = "admins-only"
priority = 50
when = { all = [{ text = "shutdown" }, { not = { role = "admin" } }] }
then = [{ reply = "Only admins can do that." }]

[[rule]]
name = "shutdown"
when = { text = "shutdown", role = "admin" }
then = [{ reply = "Shutting down (not really)." }]

[[rule]]
name = "audit"
priority = 90
continue = true
when = { keywords = ["refund", "money back"] }
then = [{ set = { var = "asked_refund", value = true } }]

[[rule]]
name = "refund"
priority = 80
when = { keywords = ["refund", "money back"] }
then = [{ reply = "Refunds take 5 days{% if session.asked_refund %} (noted){% endif %}." }]

[[rule]]
name = "greeting"
when = { intent = { label = "greeting", min = 0.7 } }
then = [{ reply = "Hello to you too!" }]

[[rule]]
name = "vip"
when = { contains = "status", script = 'user == "vip" || session.level > 2' }
then = [{ reply = "VIP status confirmed." }]

[[rule]]
name = "level-up"
when = { command = "levelup" }
then = [{ script = '''
let level = session_get("level");
if level == () { level = 0; }
level += 1;
session_set("level", level);
kv_set("level:" + user_of(message), level);
reply(`Level ${level}.`);
''' }]

[[rule]]
name = "essay"
when = { custom = { kind = "long_text", min = 40 } }
then = [{ reply = "That is a long message." }]

[[rule]]
name = "night"
when = { text = "time?", time = { from = "10:00", to = "10:00", tz = "Europe/Berlin" } }
then = [{ reply = "never" }]

[[rule]]
name = "any-time"
when = { text = "time?", time = { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], tz = "America/New_York" } }
then = [{ reply = "always" }]

[[rule]]
name = "clicks"
when = { event = "button" }
then = [{ reply = "clicked {{ message.value }}" }]

[[rule]]
name = "edits"
when = { event = "message_edited", contains = "refund" }
then = [{ reply = "{{ message.kind }}: {{ message.id }} now reads {{ message.text }}" }]

[[rule]]
name = "later"
when = { command = "later <delay> <text...>" }
then = [
  { call = { action = "send_later", input = { delay = "{{ args.delay }}", text = "⏰ {{ args.text }}" } } },
  { reply = "scheduled" },
]

[[rule]]
name = "fallback"
priority = -100
then = [{ reply = "Sorry, I did not get that. Try /help." }]
"#;

fn plugins_with_user_of() -> Plugins {
    let mut scripting = Scripting::new(ScriptLimits::default());
    scripting
        .engine_mut()
        .register_fn("user_of", |m: rhai::Map| {
            m.get("user").map(ToString::to_string).unwrap_or_default()
        });
    plugins().scripting(scripting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_commands_keywords_regexes_filters_and_scripts() {
    let mut bot = start(RULES, &plugins_with_user_of()).await;
    assert_eq!(
        bot.ask("ada", "/help").await,
        "I am Flo. Try /echo, /add, /remember."
    );
    assert_eq!(bot.ask("ada", "/echo hi   there").await, "hi   there");
    assert_eq!(bot.ask("ada", "/add 2 40").await, "42");
    assert_eq!(
        bot.ask("ada", "/add 2 forty").await,
        "'forty' is not a whole number (for <b>). Usage: /add <a:int> <b:int>"
    );
    assert_eq!(
        bot.ask("ada", "/remember colour blue green").await,
        "Stored blue green under colour."
    );
    assert_eq!(bot.ask("ada", "/forget").await, "forgotten");
    assert_eq!(bot.ask("ada", "/unremember colour").await, "deleted");
    assert_eq!(bot.ask("ada", "/unremember colour").await, "absent");
    bot.fails("/sneaky").await;
    assert_eq!(bot.ask("ada", "/echo after").await, "after");
    let e = bot.errors.lock().expect("errors").pop().expect("reported");
    assert!(e.contains("namespace 'flowbot.rules' is reserved"), "{e}");
    assert_eq!(
        bot.ask("ada", "where is ORDER #123?").await,
        "Looking up order 123 (matched 'ORDER #123')."
    );
    assert_eq!(bot.ask("ada", "shutdown").await, "Only admins can do that.");
    assert_eq!(
        bot.ask("ada", "I want my money back").await,
        "Refunds take 5 days (noted)."
    );
    assert_eq!(
        bot.ask("bob", "refunds?").await,
        "Sorry, I did not get that. Try /help."
    );
    assert_eq!(
        bot.ask("bob", "a refund please").await,
        "Refunds take 5 days (noted)."
    );
    assert_eq!(bot.ask("ada", "hello hello").await, "Hello to you too!");
    assert_eq!(
        bot.ask("ada", "hello").await,
        "Sorry, I did not get that. Try /help.",
        "one hello is below the minimum confidence"
    );
    assert_eq!(bot.ask("vip", "my status").await, "VIP status confirmed.");
    assert_eq!(
        bot.ask("ada", "my status").await,
        "Sorry, I did not get that. Try /help."
    );
    for want in ["Level 1.", "Level 2.", "Level 3."] {
        assert_eq!(bot.ask("ada", "/levelup").await, want);
    }
    assert_eq!(bot.ask("ada", "my status").await, "VIP status confirmed.");
    assert_eq!(
        bot.ask("ada", "this is a rather long message without any keyword")
            .await,
        "That is a long message."
    );
    assert_eq!(bot.ask("ada", "time?").await, "always");

    // send_later goes through the durable queue; a bad delay is the action's error.
    let asked = std::time::Instant::now();
    assert_eq!(bot.ask("ada", "/later 1s stretch").await, "scheduled");
    assert_eq!(bot.reply().await, "⏰ stretch");
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "sent after its delay"
    );
    // The action's refusal reaches the sender in its own words.
    let refused = bot.ask("ada", "/later soon stretch").await;
    assert!(refused.starts_with("'soon' is not a duration"), "{refused}");
    assert_eq!(bot.ask("ada", "/echo next").await, "next");
    let e = bot.errors.lock().expect("errors").pop().expect("reported");
    assert!(
        e.contains("rule 'later'") && e.contains("'soon' is not a duration"),
        "{e}"
    );

    // Events other than messages.
    let admin = Sender {
        id: "root".into(),
        name: None,
        roles: vec![Role::Admin],
    };
    bot.handle
        .send(Event::Message(Message::text(
            "local", "room", admin, "shutdown",
        )))
        .await
        .expect("send");
    assert_eq!(bot.reply().await, "Shutting down (not really).");
    bot.handle
        .send(Event::Interaction(flowbot_core::Interaction {
            channel: "local".into(),
            conversation: "room".into(),
            sender: Sender::user("ada"),
            value: "yes".into(),
            id: "click-1".into(),
            raw: None,
        }))
        .await
        .expect("send");
    assert_eq!(bot.reply().await, "clicked yes");

    // Edits reach only the rule that names them: not the keyword rules, not the fallback.
    let edit = |id: &str, text: &str| {
        let mut m = Message::text("local", "room", Sender::user("ada"), text);
        m.id = id.into();
        Event::MessageEdited(m)
    };
    bot.handle
        .send(edit("m1", "refund please"))
        .await
        .expect("send");
    assert_eq!(
        bot.reply().await,
        "message_edited: m1 now reads refund please"
    );
    bot.handle.send(edit("m2", "hello")).await.expect("send");
    bot.no_reply().await;
    let matched = bot
        .router
        .matching(&edit("m3", "refund"), &serde_json::Map::new(), None)
        .expect("matching");
    assert_eq!(matched, ["edits"]);

    // The names the router would pick, without running anything.
    let matched = bot
        .router
        .matching(
            &Event::Message(Message::text("local", "room", Sender::user("x"), "refund")),
            &serde_json::Map::new(),
            None,
        )
        .expect("matching");
    assert_eq!(matched, ["audit", "refund"]);
    assert!(bot.errors.lock().expect("errors").is_empty());
    bot.stop().await;
}

fn compile_err(rules: &str) -> String {
    RuleSet::compile(&[Source::inline(rules)], &plugins())
        .expect_err("must be rejected")
        .to_string()
}

#[test]
fn bad_rules_are_rejected_with_the_rule_and_where() {
    let cases = [
        (
            "[[rule]]\nname = \"a\"\nthen = [{ call = { action = \"sned\" } }]",
            "(api): rule 'a': action 1: unknown action 'sned' (known: kv.delete, kv.get, kv.set, kv_get, kv_set, log, send_later, send_message)",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { regex = \"(unclosed\" }",
            "rule 'a': regex: regex parse error",
        ),
        (
            "[[rule]]\nname = \"a\"\nthen = [{ reply = \"{{ oops \" }]",
            "rule 'a': action 1: template:",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { script = \"1 +\" }",
            "rule 'a': script:",
        ),
        (
            "[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"a\"",
            "(api): rule 'a': duplicate rule name; first defined at (api)",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { comand = \"x\" }",
            "unknown field `comand`",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { command = \"x <n:date>\" }",
            "rule 'a': command: argument 'n' has unknown type 'date'",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { time = { tz = \"Mars/Olympus\" } }",
            "rule 'a': time: unknown time zone 'Mars/Olympus'",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { custom = { kind = \"nope\" } }",
            "custom: no condition kind 'nope' is registered",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { custom = { kind = \"long_text\" } }",
            "custom 'long_text': needs `min`",
        ),
        ("[[rule]]\nname = \"bad name!\"", "rule names are 1 to 100"),
        (
            "[[rule]]\nname = \"a\"\nthen = [{ reply = \"x\", set = { var = \"v\", value = 1 } }]",
            "an action is a table with one key",
        ),
        (
            "[[rule]]\nname = \"a\"\nwhen = { event = \"typing\" }",
            "event kind 'typing' is not one of",
        ),
    ];
    for (rules, want) in cases {
        let e = compile_err(rules);
        assert!(e.contains(want), "{rules}\n  gave: {e}\n  want: {want}");
    }
}

#[test]
fn errors_in_files_name_the_file_and_line() {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("a.toml"),
        "[[rule]]\nname = \"one\"\nthen = [{ reply = \"1\" }]\n",
    )
    .expect("write");
    std::fs::write(
        dir.0.join("b.toml"),
        "# second file\n\n[[rule]]\nname = \"two\"\n\n[[rule]]\nname = \"one\"\nwhen = { regex = \"[\" }\n",
    )
    .expect("write");
    let e = RuleSet::load_dir(&dir.0, &plugins()).expect_err("duplicate");
    let file_b = dir.0.join("b.toml");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:6: rule 'one': duplicate rule name; first defined at {}:1",
            file_b.display(),
            dir.0.join("a.toml").display()
        )
    );
    std::fs::write(&file_b, "[[rule]]\nname = \"two\"\npriority = \"high\"\n").expect("write");
    let e = RuleSet::load_dir(&dir.0, &plugins()).expect_err("bad type");
    assert!(matches!(e, Error::Parse { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: invalid type", file_b.display())),
        "{e}"
    );
    let e = RuleSet::load_dir(&dir.0.join("missing"), &plugins()).expect_err("no dir");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_cuts_off_runaway_scripts_and_the_bot_carries_on() {
    let rules = r#"
[[rule]]
name = "spin"
when = { command = "spin" }
then = [{ script = "loop { }" }]

[[rule]]
name = "huge"
when = { command = "huge" }
then = [{ script = 'let s = "x"; while true { s += s; }' }]

[[rule]]
name = "deep"
when = { command = "deep" }
then = [{ script = "fn f(n) { f(n + 1) } f(0)" }]

[[rule]]
name = "typo"
when = { command = "typo" }
then = [{ script = 'let n = 1 + "a" * 2;' }]

[[rule]]
name = "not-bool"
when = { text = "cond", script = '"yes"' }
then = [{ reply = "never" }]

[[rule]]
name = "fs"
when = { command = "fs" }
then = [{ script = 'import "os" as os;' }]

[[rule]]
name = "ping"
when = { command = "ping" }
then = [{ reply = "pong" }]
"#;
    // `import` is not even parsed: the engine has no modules.
    let e = RuleSet::compile(&[Source::inline(rules)], &plugins()).expect_err("import");
    assert!(
        e.to_string().contains("rule 'fs': action 1: script:"),
        "{e}"
    );
    let rules = rules.replace("import \"os\" as os;", "reply(\"no files here\");");

    let mut bot = start(&rules, &plugins()).await;
    for (cmd, want) in [
        ("/spin", "operations limit exceeded"),
        ("/huge", "exceeds the size limit"),
        ("/deep", "call depth limit exceeded"),
        ("/typo", "Function not found: *"),
        ("cond", "condition script returned"),
    ] {
        bot.fails(cmd).await;
        // Each failure is reported, and the next message is answered as usual.
        assert_eq!(bot.ask("ada", "/ping").await, "pong", "after {cmd}");
        let errors = bot.errors.lock().expect("errors").clone();
        let last = errors.last().expect("an error was reported");
        assert!(last.contains(want), "{cmd}: {last}");
        assert!(last.contains("rule '"), "{cmd} names its rule: {last}");
    }
    assert_eq!(bot.ask("ada", "/fs").await, "no files here");
    bot.no_reply().await;
    bot.stop().await;

    // Wall time: a generous operation budget, a short clock.
    let limits = ScriptLimits {
        max_operations: u64::MAX,
        wall_time: Duration::from_millis(50),
        ..ScriptLimits::default()
    };
    let mut bot = start(&rules, &plugins().scripting(Scripting::new(limits))).await;
    bot.fails("/spin").await;
    assert_eq!(bot.ask("ada", "/ping").await, "pong");
    let errors = bot.errors.lock().expect("errors").clone();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("wall time limit exceeded")),
        "{errors:?}"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_rule_set_takes_over_at_once() {
    let mut bot = start(
        "[[rule]]\nname = \"v\"\nthen = [{ reply = \"one\" }]",
        &plugins(),
    )
    .await;
    assert_eq!(bot.ask("ada", "x").await, "one");
    let two = RuleSet::compile(
        &[Source::inline(
            "[[rule]]\nname = \"v\"\nthen = [{ reply = \"two\" }]",
        )],
        &plugins(),
    )
    .expect("compile");
    bot.router.replace(two);
    assert_eq!(bot.ask("ada", "x").await, "two");
    bot.stop().await;
}

const DIALOGS: &str = r#"
[[rule]]
name = "feedback"
when = { command = "feedback" }
then = [{ dialog = "feedback" }]

[[rule]]
name = "stored"
when = { command = "stored" }
then = [
  { call = { action = "kv.get", input = { key = "feedback:{{ message.user }}" }, save_as = "fb" } },
  { reply = "{{ session.fb.value or 'nothing' }}" },
]

[[rule]]
name = "fallback"
priority = -100
then = [{ reply = "no dialog here" }]

[[dialog]]
name = "feedback"
timeout = "3s"
then = [
  { call = { action = "kv.set", input = { key = "feedback:{{ message.user }}", value = "{{ slots.rating }}|{{ slots.problem or slots.comment }}" } } },
  { reply = "Feedback sent." },
]

[[dialog.step]]
name = "rating"
ask = "How would you rate us, 1 to 5?"
expect = { type = "int", min = 1, max = 5 }
branch = [{ when = "slots.rating <= 2", goto = "problem" }]
next = "comment"

[[dialog.step]]
name = "problem"
ask = "Sorry to hear that. What went wrong?"
next = "confirm"

[[dialog.step]]
name = "comment"
ask = "Thanks! Anything to add?"
retry = "Just a few words, please."

[[dialog.step]]
name = "confirm"
ask = "Send rating {{ slots.rating }}{% if slots.problem %} ({{ slots.problem }}){% endif %}?"
expect = { type = "confirm" }

"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialogs_ask_validate_branch_confirm_and_finish_with_an_action() {
    let mut bot = start(DIALOGS, &plugins()).await;
    assert_eq!(
        bot.ask("ada", "/feedback").await,
        "How would you rate us, 1 to 5?"
    );
    assert_eq!(
        bot.ask("ada", "seven").await,
        "Please answer with a whole number from 1 to 5.\nHow would you rate us, 1 to 5?"
    );
    assert_eq!(
        bot.ask("ada", "help").await,
        "(Answer the question, or say cancel to stop.)\nHow would you rate us, 1 to 5?"
    );
    assert_eq!(
        bot.ask("ada", "2").await,
        "Sorry to hear that. What went wrong?"
    );
    let confirm = bot.ask_full("ada", "slow replies").await;
    assert_eq!(confirm.text, "Send rating 2 (slow replies)?");
    let labels: Vec<&str> = confirm.buttons.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["yes", "no"]);
    assert_eq!(bot.ask("ada", "yes").await, "Feedback sent.");
    assert_eq!(bot.ask("ada", "/stored").await, "2|slow replies");
    assert_eq!(
        bot.ask("ada", "yes").await,
        "no dialog here",
        "the dialog ended"
    );

    // The other branch, and cancelling at the confirmation.
    assert_eq!(
        bot.ask("bob", "/feedback").await,
        "How would you rate us, 1 to 5?"
    );
    assert_eq!(bot.ask("bob", "5").await, "Thanks! Anything to add?");
    assert_eq!(bot.ask("bob", "great").await, "Send rating 5?");
    assert_eq!(bot.ask("bob", "no").await, "Cancelled.");
    assert_eq!(bot.ask("bob", "/stored").await, "nothing");

    // Cancel at any step; other users' dialogs are their own.
    assert_eq!(
        bot.ask("cy", "/feedback").await,
        "How would you rate us, 1 to 5?"
    );
    assert_eq!(bot.ask("ada", "4").await, "no dialog here");
    assert_eq!(bot.ask("cy", "CANCEL").await, "Cancelled.");
    assert_eq!(bot.ask("cy", "4").await, "no dialog here");

    // A dialog left unanswered past its timeout ends; the message goes to the rules.
    assert_eq!(
        bot.ask("dee", "/feedback").await,
        "How would you rate us, 1 to 5?"
    );
    // 3.3 s after the session was stored, on FlowBot's clock, without the wait.
    bot.in_dialog("dee").await;
    flowbot_core::clock::skip(Duration::from_millis(3300));
    assert_eq!(bot.ask("dee", "3").await, "no dialog here");
    assert!(bot.errors.lock().expect("errors").is_empty());
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialog_continues_after_a_restart() {
    let rules = DIALOGS.replace("timeout = \"3s\"", "timeout = \"10m\"");
    let mut bot = start(&rules, &plugins()).await;
    assert_eq!(
        bot.ask("ada", "/feedback").await,
        "How would you rate us, 1 to 5?"
    );
    assert_eq!(bot.ask("ada", "4").await, "Thanks! Anything to add?");
    let dir = bot.stop().await;

    // A new bot on the same database: the session holds the dialog and its slots.
    let mut bot = start_in(dir, &rules, &plugins()).await;
    assert_eq!(bot.ask("ada", "lovely").await, "Send rating 4?");
    assert_eq!(bot.ask("ada", "yes").await, "Feedback sent.");
    assert_eq!(bot.ask("ada", "/stored").await, "4|lovely");
    bot.stop().await;
}

#[test]
fn bad_dialogs_are_rejected_with_the_dialog_and_where() {
    let step = "[[dialog.step]]\nname = \"s\"\nask = \"?\"\n";
    let cases = [
        (
            format!("[[dialog]]\nname = \"d\"\n{step}next = \"nowhere\"\n"),
            "(api): dialog 'd': step 's': no step named 'nowhere'".to_owned(),
        ),
        (
            format!("[[dialog]]\nname = \"d\"\n{step}expect = {{ type = \"date\" }}\n"),
            "dialog 'd': step 's': expect: unknown type 'date'".to_owned(),
        ),
        (
            format!(
                "[[dialog]]\nname = \"d\"\n{step}expect = {{ type = \"int\", choices = [\"a\"] }}\n"
            ),
            "expect: give one of type, choices, regex or script".to_owned(),
        ),
        (
            "[[rule]]\nname = \"r\"\nthen = [{ dialog = \"ghost\" }]\n".to_owned(),
            "rule 'r': starts dialog 'ghost', which is not defined".to_owned(),
        ),
        (
            format!(
                "[[dialog]]\nname = \"a\"\nthen = [{{ dialog = \"b\" }}]\n{step}\n[[dialog]]\nname = \"b\"\nthen = [{{ dialog = \"a\" }}]\n{step}"
            ),
            "dialogs start each other in a cycle: a → b → a".to_owned(),
        ),
        (
            format!("[[dialog]]\nname = \"a\"\n{step}\n[[dialog]]\nname = \"a\"\n{step}"),
            "dialog 'a': duplicate dialog name".to_owned(),
        ),
        (
            "[[dialog]]\nname = \"a\"\nstep = []\n".to_owned(),
            "a dialog needs at least one".to_owned(),
        ),
        (
            format!(
                "[[dialog]]\nname = \"d\"\n{step}branch = [{{ when = \"slots.x >\", goto = \"end\" }}]\n"
            ),
            "step 's': branch: Script is incomplete".to_owned(),
        ),
    ];
    for (rules, want) in cases {
        let e = compile_err(&rules);
        assert!(e.contains(&want), "{rules}\n  gave: {e}\n  want: {want}");
    }
}

/// A classifier that learns: a text gets, for each label, the largest share of words it
/// has in common with one of that label's examples. It refuses fewer than two labels, as a
/// trained classifier (flowbot-gpu's) does.
#[derive(Default)]
struct NearestExample {
    examples: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
    lessons: std::sync::atomic::AtomicUsize,
}

fn words(s: &str) -> std::collections::BTreeSet<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[async_trait]
impl Classifier for NearestExample {
    async fn classify(&self, text: &str) -> flowbot_core::Result<Vec<Label>> {
        let said = words(text);
        let examples = self.examples.lock().expect("examples").clone();
        Ok(examples
            .iter()
            .map(|(label, texts)| {
                let best = texts
                    .iter()
                    .map(|t| {
                        let w = words(t);
                        let common = w.intersection(&said).count() as f32;
                        common / w.union(&said).count().max(1) as f32
                    })
                    .fold(0.0, f32::max);
                Label {
                    label: label.clone(),
                    confidence: best,
                }
            })
            .collect())
    }

    async fn learn(
        &self,
        examples: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> flowbot_core::Result<()> {
        if examples.len() < 2 {
            return Err(flowbot_core::Error::Build(
                "at least two intents need examples".into(),
            ));
        }
        *self.examples.lock().expect("examples") = examples.clone();
        self.lessons
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

const INTENT_RULES: &str = r#"
[[rule]]
name = "hello"
when = { intent = { label = "greeting", min = 0.5, examples = ["hello there", "good morning"] } }
then = [{ reply = "Hello!" }]

[[rule]]
name = "password"
when = { intent = { label = "reset_password", min = 0.5, examples = ["I forgot my password", "reset my password"] } }
then = [{ reply = "Here is how to reset it." }]

[[rule]]
name = "also-hello"
when = { all = [{ intent = { label = "greeting", examples = ["hi", "hello there"] } }, { contains = "!" }] }
then = [{ reply = "Hi!" }]
"#;

#[tokio::test]
async fn the_library_trains_the_classifier_with_the_rules_examples() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("intents.toml"), INTENT_RULES).expect("write");
    let library = flowbot_rules::RuleLibrary::open(
        flowbot_rules::RuleFiles::Dir(dir.0.clone()),
        None,
        plugins(),
    )
    .await
    .expect("open");
    // Examples from every condition naming a label, each once, in order.
    let set = library.router().current();
    assert_eq!(
        set.intent_examples()["greeting"],
        ["hello there", "good morning", "hi"]
    );
    let classifier = Arc::new(NearestExample::default());
    library
        .set_classifier(classifier.clone())
        .await
        .expect("learns");
    assert_eq!(
        classifier.lessons.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let route = |text: &'static str| {
        let library = &library;
        let classifier = classifier.clone();
        async move {
            let labels = classifier.classify(text).await.expect("classify");
            library
                .router()
                .matching(
                    &Event::Message(Message::text("local", "room", Sender::user("u"), text)),
                    &serde_json::Map::new(),
                    Some(labels),
                )
                .expect("matching")
        }
    };
    assert_eq!(route("I forgot my password").await, ["password"]);
    assert_eq!(route("hello there").await, ["hello"]);

    // The same examples again: nothing to learn.
    library.reload().await.expect("reload");
    assert_eq!(
        classifier.lessons.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // New examples: learned before the rules are put in force.
    std::fs::write(
        dir.0.join("intents.toml"),
        INTENT_RULES.replace("\"reset my password\"", "\"new password please\""),
    )
    .expect("write");
    library.reload().await.expect("reload");
    assert_eq!(
        classifier.lessons.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(route("new password please").await, ["password"]);

    // Examples the classifier refuses: the reload fails naming them, and the rules and the
    // model in force stay.
    std::fs::write(
        dir.0.join("intents.toml"),
        r#"
[[rule]]
name = "only-hello"
when = { intent = { label = "greeting", examples = ["hello"] } }
then = [{ reply = "Hello!" }]
"#,
    )
    .expect("write");
    let err = library.reload().await.expect_err("refused");
    assert!(matches!(err, Error::Classifier(_)), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("intent examples: "), "{text}");
    assert!(
        text.contains("at least two intents need examples"),
        "{text}"
    );
    assert_eq!(library.list().len(), 3);
    assert_eq!(route("new password please").await, ["password"]);

    // An empty example is refused when the rules compile.
    std::fs::write(
        dir.0.join("intents.toml"),
        INTENT_RULES.replace("\"hi\"", "\" \""),
    )
    .expect("write");
    let err = library.reload().await.expect_err("refused").to_string();
    assert!(
        err.contains("intent 'greeting': an example is empty"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stored_rule_whose_examples_the_classifier_refuses_is_not_stored() {
    let dir = TempDir::new();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_dir(&dir.0).await.expect("store"));
    let library = flowbot_rules::RuleLibrary::open(
        flowbot_rules::RuleFiles::Fixed(Vec::new()),
        Some(store.clone()),
        plugins(),
    )
    .await
    .expect("open");
    let classifier = Arc::new(NearestExample::default());
    library
        .set_classifier(classifier.clone())
        .await
        .expect("nothing to learn");
    let rule = |name: &str, label: &str, example: &str| {
        flowbot_rules::rule_from_json(serde_json::json!({
            "name": name,
            "when": { "intent": { "label": label, "examples": [example] } },
            "then": [{ "reply": name }],
        }))
        .expect("rule")
    };
    // One intent alone is refused: nothing is stored, nothing changes.
    let err = library
        .create(rule("hello", "greeting", "hello there"))
        .await
        .expect_err("one intent");
    assert!(matches!(err, Error::Classifier(_)), "{err}");
    assert!(library.list().is_empty());
    assert!(store.kv_list("flowbot.rules").await.expect("kv").is_empty());
    // A second rule with another intent is refused too (the first was never stored).
    assert!(
        library
            .create(rule("bye", "goodbye", "see you"))
            .await
            .is_err()
    );
    assert_eq!(
        classifier.lessons.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // A rule naming two intents with examples is learned, then stored and in force.
    let both = flowbot_rules::rule_from_json(serde_json::json!({
        "name": "hello-or-bye",
        "when": { "any": [
            { "intent": { "label": "greeting", "examples": ["hello there"] } },
            { "intent": { "label": "goodbye", "examples": ["see you"] } },
        ] },
        "then": [{ "reply": "hi or bye" }],
    }))
    .expect("rule");
    library.create(both).await.expect("learned and stored");
    assert_eq!(
        classifier.lessons.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(store.kv_list("flowbot.rules").await.expect("kv").len(), 1);
    assert_eq!(library.list().len(), 1);
}
