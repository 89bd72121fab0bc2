//! The prompt library through the server: prompts created, activated, rolled back, diffed
//! and split through `/api/v1/llm/prompts`, and what the model then receives as its system
//! message (the fake provider records every request); prompt files of `[llm] prompts_dir`;
//! the errors of bad templates, bad bodies and unknown names; docs/llm.md's prompt files.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;
mod harness;

use std::path::{Path, PathBuf};

use flowbot_core::llm::Usage;
use flowbot_llm::Dialect;
use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use flowbot_llm::prompt::{PromptContent, PromptLibrary, VersionMeta};
use serde_json::{Value, json};

const MODEL: &str = "gpt-4o-mini";

/// A server whose model is the fake (OpenAI's dialect, `gpt-4o-mini`) answering "ok" to
/// everything, whose default prompt is the library prompt `support`, with `vars.bot`.
async fn server(fake: &FakeProvider, prompts_dir: Option<PathBuf>) -> harness::Server {
    fake.expect_key(None);
    fake.respond_with(|_| Turn::Reply(Reply::text("ok")));
    let model = fake.config(Dialect::Openai, MODEL);
    harness::start_with(move |c| {
        c.llm.models.insert("main".into(), model);
        c.llm.prompt = Some("support".into());
        c.llm.vars.insert("bot".into(), json!("Flo"));
        c.llm.prompts_dir = prompts_dir;
    })
    .await
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(s: &harness::Server) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1/llm/prompts", s.base),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let req = self.http.post(self.url(path));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn ok(res: reqwest::Response, status: u16) -> Value {
        assert_eq!(res.status().as_u16(), status, "{:?}", res.text().await);
        res.json().await.unwrap()
    }
}

/// The system message of the latest request the model received.
fn last_system(fake: &FakeProvider) -> String {
    let requests = fake.requests();
    let body = &requests.last().expect("a request").body;
    let first = &body["messages"][0];
    assert_eq!(first["role"], "system", "{body}");
    first["content"].as_str().unwrap().to_owned()
}

/// The last message of the latest request (the user's turn).
fn last_user(fake: &FakeProvider) -> String {
    let requests = fake.requests();
    let messages = requests.last().unwrap().body["messages"]
        .as_array()
        .unwrap()
        .clone();
    let last = messages.last().unwrap();
    assert_eq!(last["role"], "user");
    last["content"].as_str().unwrap().to_owned()
}

async fn add_rule(s: &harness::Server, rule: Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/rules", s.base))
        .json(&rule)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201, "{:?}", res.text().await);
}

async fn runs(s: &harness::Server) -> Vec<Value> {
    let page = common::get_json(format!("{}/api/v1/llm/runs?limit=1000", s.base)).await;
    page["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_put_through_the_api_is_the_system_message_with_the_message_and_session_rendered()
{
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, None).await;
    let api = Api::new(&s);
    // A rule that keeps the user's name in the session, and one that asks the model with
    // another library prompt.
    add_rule(
        &s,
        json!({"name": "iam", "when": {"command": "iam <name>"},
               "then": [{"set": {"var": "name", "value": "{{ args.name }}"}}, {"reply": "Hi {{ args.name }}"}]}),
    )
    .await;
    add_rule(
        &s,
        json!({"name": "terse", "when": {"command": "terse <q...>"},
               "then": [{"llm": {"prompt": "terse", "text": "{{ args.q }}"}}]}),
    )
    .await;

    let created = Api::ok(
        api.put(
            "/support",
            json!({
                "system": "You are {{ vars.bot }}.\n{{ message.user }} on {{ message.channel }} ({{ session.name | default('a stranger') }}) asks: {{ message.text }}",
                "author": "ana",
                "comment": "first cut",
            }),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(
        (created["version"].as_u64(), created["created"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(created["prompt"]["active"], 1);
    assert_eq!(created["prompt"]["versions"][0]["author"], "ana");

    let mut ws = harness::chat(&s, "ann", "p1").await;
    assert_eq!(harness::say(&mut ws, "what is up?").await["text"], "ok");
    assert_eq!(
        last_system(&fake),
        "You are Flo.\nann on web (a stranger) asks: what is up?"
    );
    assert_eq!(harness::say(&mut ws, "/iam Ann").await["text"], "Hi Ann");
    assert_eq!(harness::say(&mut ws, "and now?").await["text"], "ok");
    assert_eq!(
        last_system(&fake),
        "You are Flo.\nann on web (Ann) asks: and now?"
    );
    assert_eq!(last_user(&fake), "and now?");

    // The run remembers the prompt and version it used.
    let run = runs(&s).await.into_iter().next().unwrap();
    assert_eq!(run["prompt"], json!({"name": "support", "version": 1}));

    // A rule's `llm` action names another prompt, with a user template.
    Api::ok(
        api.put(
            "/terse",
            json!({"system": "Answer in one word.", "user": "Question from {{ session.name }}: {{ message.text }}"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(
        harness::say(&mut ws, "/terse why is the sky blue").await["text"],
        "ok"
    );
    assert_eq!(last_system(&fake), "Answer in one word.");
    assert_eq!(last_user(&fake), "Question from Ann: why is the sky blue");

    // Text that names no library prompt is the system text itself.
    add_rule(
        &s,
        json!({"name": "literal", "when": {"command": "literal"},
               "then": [{"llm": {"prompt": "Say hello politely.", "text": "hi"}}]}),
    )
    .await;
    harness::say(&mut ws, "/literal").await;
    assert_eq!(last_system(&fake), "Say hello politely.");

    // The list shows both prompts.
    let list = Api::ok(api.get("").await, 200).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["support", "terse"]);
    assert_eq!(list["items"][0]["versions"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_and_rollback_change_what_the_model_is_sent_and_diff_shows_the_change() {
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, None).await;
    let api = Api::new(&s);
    Api::ok(
        api.put(
            "/support",
            json!({"system": "One.\nBe kind to {{ message.user }}."}),
        )
        .await,
        201,
    )
    .await;
    let v2 = Api::ok(
        api.put(
            "/support",
            json!({"system": "Two.\nBe kind to {{ message.user }}.", "comment": "shorter"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(
        v2["prompt"]["active"], 1,
        "a later version waits for activation"
    );
    // The same content again adds nothing.
    let same = Api::ok(
        api.put(
            "/support",
            json!({"system": "Two.\nBe kind to {{ message.user }}.", "comment": "shorter"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        (same["version"].as_u64(), same["created"].as_bool()),
        (Some(2), Some(false))
    );

    let mut ws = harness::chat(&s, "bo", "p2").await;
    harness::say(&mut ws, "hi").await;
    assert_eq!(last_system(&fake), "One.\nBe kind to bo.");

    let active = Api::ok(
        api.post("/support/activate", Some(json!({"version": 2})))
            .await,
        200,
    )
    .await;
    assert_eq!(active["active"], 2);
    harness::say(&mut ws, "hi").await;
    assert_eq!(last_system(&fake), "Two.\nBe kind to bo.");

    let diff = api.get("/support/diff?from=1&to=2").await;
    assert_eq!(diff.status().as_u16(), 200);
    assert!(
        diff.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let diff = diff.text().await.unwrap();
    assert!(
        diff.starts_with("--- support@v1\n+++ support@v2\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n-One.\n+Two.\n Be kind to {{ message.user }}.\n"),
        "{diff}"
    );
    assert_eq!(
        api.get("/support/diff?from=2&to=2")
            .await
            .text()
            .await
            .unwrap(),
        ""
    );

    let back = Api::ok(api.post("/support/rollback", None).await, 200).await;
    assert_eq!(back["active"], 1);
    harness::say(&mut ws, "hi").await;
    assert_eq!(last_system(&fake), "One.\nBe kind to bo.");
    let none = harness::problem(api.post("/support/rollback", None).await, 409).await;
    assert!(
        none["detail"]
            .as_str()
            .unwrap()
            .contains("no previously active version"),
        "{none}"
    );

    // The prompt shows every version, the active one and the history.
    let one = Api::ok(api.get("/support").await, 200).await;
    assert_eq!(one["versions"].as_array().unwrap().len(), 2);
    assert_eq!(one["versions"][1]["comment"], "shorter");
    assert_eq!(
        one["versions"][1]["content"]["system"],
        "Two.\nBe kind to {{ message.user }}."
    );
    assert_eq!(one["active"], 1);

    // Wrong versions and bodies.
    let missing = harness::problem(
        api.post("/support/activate", Some(json!({"version": 9})))
            .await,
        404,
    )
    .await;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("has no version 9"),
        "{missing}"
    );
    harness::problem(
        api.post("/support/activate", Some(json!({"version": "two"})))
            .await,
        400,
    )
    .await;
    harness::problem(
        api.post(
            "/support/activate",
            Some(json!({"version": 2, "at": "now"})),
        )
        .await,
        400,
    )
    .await;
    harness::problem(api.get("/support/diff?from=1&to=7").await, 404).await;
    harness::problem(api.get("/support/diff?from=1").await, 400).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_sends_two_users_to_their_versions_every_time_and_stats_count_each_version() {
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, None).await;
    let api = Api::new(&s);
    let a = "Version A for {{ message.user }}.";
    let b = "Version B for {{ message.user }}.";
    Api::ok(api.put("/support", json!({"system": a})).await, 201).await;
    Api::ok(api.put("/support", json!({"system": b})).await, 201).await;
    let split = Api::ok(
        api.put("/support/split", json!({"weights": {"1": 1, "2": 1}}))
            .await,
        200,
    )
    .await;
    assert_eq!(
        split["split"],
        json!([{"version": 1, "weight": 1}, {"version": 2, "weight": 1}])
    );

    // Which users land where follows from the library's hash of the name and the user:
    // find one user of each arm with the library itself.
    let mut local = PromptLibrary::new();
    local
        .put("support", PromptContent::system(a), VersionMeta::default())
        .unwrap();
    local
        .put("support", PromptContent::system(b), VersionMeta::default())
        .unwrap();
    local.set_split("support", &[(1, 1), (2, 1)]).unwrap();
    let user_of = |version: u32| {
        (0..1000)
            .map(|i| format!("user{i}"))
            .find(|u| local.assign("support", Some(u)).unwrap() == version)
            .unwrap()
    };
    let (ua, ub) = (user_of(1), user_of(2));

    let mut wa = harness::chat(&s, &ua, "split-a").await;
    let mut wb = harness::chat(&s, &ub, "split-b").await;
    for _ in 0..2 {
        harness::say(&mut wa, "hello").await;
        assert_eq!(last_system(&fake), format!("Version A for {ua}."));
    }
    for _ in 0..3 {
        harness::say(&mut wb, "hello").await;
        assert_eq!(last_system(&fake), format!("Version B for {ub}."));
    }

    // Each run's outcome is in its version's statistics: runs, tokens, cost and time.
    let stats = Api::ok(api.get("/support/stats").await, 200).await;
    let versions = stats["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    let usage = Usage {
        input_tokens: 10,
        output_tokens: 2,
        ..Usage::default()
    };
    let cost = flowbot_llm::PriceTable::with_defaults()
        .cost(&format!("openai/{MODEL}"), &usage)
        .unwrap()
        .micro_usd() as u64;
    for (v, calls) in [(&versions[0], 2u64), (&versions[1], 3)] {
        assert_eq!(v["calls"], calls, "{v}");
        assert_eq!(v["tokens_in"], 10 * calls, "{v}");
        assert_eq!(v["tokens_out"], 2 * calls, "{v}");
        assert_eq!(v["cost_micros"], cost * calls, "{v}");
        assert!(v["mean_latency_ms"].is_u64(), "{v}");
    }
    assert_eq!(
        (
            versions[0]["active"].as_bool(),
            versions[1]["active"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let used: Vec<(String, u64)> = runs(&s)
        .await
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["prompt"]["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        used.iter().filter(|(u, v)| *u == ua && *v == 1).count(),
        2,
        "{used:?}"
    );
    assert_eq!(
        used.iter().filter(|(u, v)| *u == ub && *v == 2).count(),
        3,
        "{used:?}"
    );

    // Ending the split sends everyone to the active version.
    Api::ok(api.put("/support/split", json!({"weights": {}})).await, 200).await;
    harness::say(&mut wb, "hello").await;
    assert_eq!(last_system(&fake), format!("Version A for {ub}."));

    // Splits that cannot be.
    let zero = harness::problem(
        api.put("/support/split", json!({"weights": {"1": 0}}))
            .await,
        422,
    )
    .await;
    assert!(
        zero["detail"]
            .as_str()
            .unwrap()
            .contains("every weight is 0"),
        "{zero}"
    );
    harness::problem(
        api.put("/support/split", json!({"weights": {"5": 1}}))
            .await,
        404,
    )
    .await;
    harness::problem(
        api.put("/support/split", json!({"weights": {"one": 1}}))
            .await,
        400,
    )
    .await;
    harness::problem(api.put("/support/split", json!([1, 2])).await, 400).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_files_load_at_start_with_their_model_variants() {
    let dir = common::TempDir::new("flowbot-prompts");
    std::fs::write(
        dir.0.join("support.toml"),
        r#"author = "ops"
comment = "from the folder"
system = "Generic {{ vars.bot }}."

[variants."openai/*"]
system = "OpenAI-tuned {{ vars.bot }} for {{ message.user }}."

[variants."anthropic/*"]
system = "Claude-tuned {{ vars.bot }}."
"#,
    )
    .unwrap();
    std::fs::write(dir.0.join("README.md"), "not a prompt").unwrap();
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, Some(dir.0.clone())).await;
    let api = Api::new(&s);

    let mut ws = harness::chat(&s, "cy", "p4").await;
    harness::say(&mut ws, "hi").await;
    assert_eq!(last_system(&fake), "OpenAI-tuned Flo for cy.");
    let run = runs(&s).await.into_iter().next().unwrap();
    assert_eq!(
        run["prompt"],
        json!({"name": "support", "version": 1, "variant": "openai/*"})
    );

    let one = Api::ok(api.get("/support").await, 200).await;
    assert_eq!(one["versions"][0]["author"], "ops");
    assert_eq!(one["versions"][0]["comment"], "from the folder");
    // A version made through the API on top of the file's.
    Api::ok(
        api.put(
            "/support",
            json!({"system": "API {{ vars.bot }}.", "activate": true}),
        )
        .await,
        201,
    )
    .await;
    harness::say(&mut ws, "hi").await;
    assert_eq!(last_system(&fake), "API Flo.");
    s.stop().await;

    // A file that does not parse stops the start, naming it.
    std::fs::write(dir.0.join("broken.toml"), "system = \"{{ oops\"\n").unwrap();
    let mut config = flowbot_server::config::Config::default();
    config
        .llm
        .models
        .insert("main".into(), fake.config(Dialect::Openai, MODEL));
    config.llm.prompts_dir = Some(dir.0.clone());
    let err = flowbot_server::llm::assistant(&config.llm, None)
        .await
        .err()
        .expect("a file that does not parse stops the start")
        .to_string();
    assert!(err.starts_with("llm.prompts_dir ("), "{err}");
    assert!(err.contains("broken@v1/system"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_templates_get_422_naming_the_line_and_unknown_names_404() {
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, None).await;
    let api = Api::new(&s);

    let bad = harness::problem(
        api.put("/bad", json!({"system": "Hello.\nYou are {{ vars.bot"}))
            .await,
        422,
    )
    .await;
    let detail = bad["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("template 'bad@v1/system', line 2: "),
        "{detail}"
    );
    assert_eq!(
        bad["errors"],
        json!([{"template": "bad@v1/system", "line": 2}])
    );
    let variant = harness::problem(
        api.put(
            "/bad",
            json!({"system": "ok", "variants": {"anthropic/*": {"system": "fine\n\n{% if %}"}}}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(
        variant["errors"],
        json!([{"template": "bad@v1/system[anthropic/*]", "line": 3}])
    );
    harness::problem(
        api.put(
            "/bad",
            json!({"system": "ok", "variants": {"*": {"system": "x"}}}),
        )
        .await,
        422,
    )
    .await;
    // Nothing was stored.
    harness::problem(api.get("/bad").await, 404).await;

    // Bodies that are not a version, names that cannot be.
    for body in [
        json!({}),
        json!({"sytem": "typo"}),
        json!({"system": 5}),
        json!("text"),
    ] {
        let p = harness::problem(api.put("/bad", body.clone()).await, 400).await;
        assert!(
            p["detail"].as_str().unwrap().starts_with("invalid body: "),
            "{body}: {p}"
        );
    }
    let not_json = reqwest::Client::new()
        .put(api.url("/bad"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    harness::problem(not_json, 400).await;
    let name = harness::problem(api.put("/bad%20name", json!({"system": "x"})).await, 400).await;
    assert!(
        name["detail"]
            .as_str()
            .unwrap()
            .contains("invalid prompt name 'bad name'"),
        "{name}"
    );

    // Unknown prompts.
    for res in [
        api.get("/nope").await,
        api.get("/nope/stats").await,
        api.get("/nope/diff?from=1&to=2").await,
        api.post("/nope/activate", Some(json!({"version": 1})))
            .await,
        api.post("/nope/rollback", None).await,
        api.put("/nope/split", json!({"weights": {"1": 1}})).await,
    ] {
        let p = harness::problem(res, 404).await;
        assert_eq!(p["detail"], "no prompt named 'nope'");
    }

    // A template that compiles but fails at render (strict: an unknown session variable)
    // fails the answer with the bot's apology; the log names the template and the line.
    Api::ok(
        api.put("/support", json!({"system": "Hi {{ session.nickname }}"}))
            .await,
        201,
    )
    .await;
    let mut ws = harness::chat(&s, "dee", "p5").await;
    let answer = harness::say(&mut ws, "hello").await;
    assert_ne!(answer["text"], "ok");
    assert!(
        fake.requests().is_empty(),
        "no request leaves with a broken prompt"
    );
    s.stop().await;
}

/// docs/llm.md's prompt files (blocks fenced as `toml prompt-file`, the first line naming the
/// file) load as a folder of prompts and render.
#[test]
fn the_prompt_files_of_the_guide_load() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/llm.md"))
            .unwrap();
    let dir = common::TempDir::new("flowbot-docs-prompts");
    let mut lines = guide.lines();
    let mut names = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim() != "```toml prompt-file" {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let file = block[0]
            .strip_prefix("# ")
            .and_then(|f| f.strip_suffix(".toml"))
            .unwrap_or_else(|| panic!("the block's first line names its file: {}", block[0]));
        std::fs::write(dir.0.join(format!("{file}.toml")), block.join("\n")).unwrap();
        names.push(file.to_owned());
    }
    assert!(!names.is_empty(), "docs/llm.md has prompt files");
    let mut library = PromptLibrary::new();
    let loaded = library.load_dir(&dir.0).unwrap();
    assert_eq!(loaded.len(), names.len());
    let cx = flowbot_llm::prompt::PromptContext::new()
        .with_var("bot", json!("Flo"))
        .with_var("company", json!("Example Ltd"));
    for name in &names {
        for model in ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"] {
            let r = library.render(name, model, Some("ann"), &cx).unwrap();
            assert!(!r.system.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_on_an_answer_counts_once_for_the_prompt_version_that_wrote_it() {
    let fake = FakeProvider::start().await.unwrap();
    let s = server(&fake, None).await;
    let api = Api::new(&s);
    Api::ok(
        api.put("/support", json!({"system": "You are {{ vars.bot }}."}))
            .await,
        201,
    )
    .await;
    let mut ws = harness::chat(&s, "ivy", "fb").await;
    assert_eq!(harness::say(&mut ws, "hello").await["text"], "ok");
    let run = runs(&s).await[0]["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/llm/runs/{run}/feedback", s.base);
    let given = Api::ok(
        http.post(&url)
            .json(&json!({"positive": true}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(given["prompt"]["prompt"], "support");
    assert_eq!(given["prompt"]["version"], 1);
    assert_eq!(given["prompt"]["stats"]["positive"], 1);
    assert_eq!(given["prompt"]["stats"]["negative"], 0);
    // Once per run; the run keeps it.
    let again = http
        .post(&url)
        .json(&json!({"positive": false}))
        .send()
        .await
        .unwrap();
    harness::problem(again, 409).await;
    let stored: Value = common::get_json(format!("{}/api/v1/llm/runs/{run}", s.base)).await;
    assert_eq!(stored["feedback"], true);
    let bad = http
        .post(&url)
        .json(&json!({"stars": 5}))
        .send()
        .await
        .unwrap();
    harness::problem(bad, 400).await;
    let unknown = http
        .post(format!("{}/api/v1/llm/runs/nope/feedback", s.base))
        .json(&json!({"positive": true}))
        .send()
        .await
        .unwrap();
    harness::problem(unknown, 404).await;
    let stats = Api::ok(api.get("/support/stats").await, 200).await;
    assert!(stats.to_string().contains("\"positive\":1"), "{stats}");
    s.stop().await;
}
