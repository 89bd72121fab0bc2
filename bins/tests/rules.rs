//! Rules through the server: rule files reloaded while it runs, the demo dialog across a
//! restart, and rules stored through the REST API.

mod common;
mod harness;

use std::time::Duration;

use common::TempDir;
use flowbot_core::CancellationToken;
use flowbot_server::config::Config;
use flowbot_server::run::run_server;
use harness::{chat, problem, say, start, start_with};
use serde_json::{Value, json};

fn text_of(frame: &Value) -> String {
    frame["text"].as_str().expect("text").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_reload_while_running_and_bad_changes_are_refused() {
    let rules = TempDir::new("flowbot-rules-dir");
    let file = rules.0.join("bot.toml");
    let version = |reply: &str| {
        format!(
            "[[rule]]\nname = \"ask\"\nwhen = {{ text = \"version?\" }}\nthen = [{{ reply = \"{reply}\" }}]\n"
        )
    };
    std::fs::write(&file, version("v1")).expect("write");

    // A directory that does not compile stops the server at start, naming file and line.
    std::fs::write(
        rules.0.join("broken.toml"),
        "\n[[rule]]\nname = \"b\"\nwhen = { regex = \"(\" }\n",
    )
    .expect("write");
    let mut config = Config::default();
    config.rules.dir = Some(rules.0.clone());
    config.database.url = format!("sqlite://{}/x.db", rules.0.display());
    let e = run_server(config, CancellationToken::new(), None)
        .await
        .expect_err("broken rules");
    let broken = rules.0.join("broken.toml");
    assert!(
        e.to_string()
            .starts_with(&format!("rules: {}:2: rule 'b': regex:", broken.display())),
        "{e}"
    );
    std::fs::remove_file(&broken).expect("remove");

    let dir = rules.0.clone();
    let s = start_with(move |c| {
        c.rules.dir = Some(dir);
        c.rules.poll_interval_ms = 50;
    })
    .await;
    let mut ws = chat(&s, "ada", "rules").await;
    assert_eq!(text_of(&say(&mut ws, "version?").await), "v1");

    std::fs::write(&file, version("v2")).expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = text_of(&say(&mut ws, "version?").await);
        if text == "v2" {
            break;
        }
        assert_eq!(text, "v1", "only whole rule sets are ever seen");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An invalid change is refused; the rules in force stay.
    std::fs::write(
        &file,
        "[[rule]]\nname = \"ask\"\nthen = [{ call = { action = \"nope\" } }]\n",
    )
    .expect("write");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metrics.contains("flowbot_rules_reloads_total{outcome=\"rejected\"} 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text_of(&say(&mut ws, "version?").await), "v2");
    s.stop.cancel();
    s.task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dialog_continues_after_a_server_restart() {
    let data = TempDir::new("flowbot-dialog-restart");
    let url = format!("sqlite://{}/flowbot.db", data.0.display());
    let u = url.clone();
    let s = start_with(move |c| c.database.url = u).await;
    let mut ws = chat(&s, "ada", "fb").await;
    let q = say(&mut ws, "/feedback").await;
    assert_eq!(q["text"], "How would you rate this demo, from 1 to 5?");
    assert_eq!(q["buttons"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        say(&mut ws, "4").await["text"],
        "Glad you like it! Anything to add?"
    );
    s.stop.cancel();
    s.task.await.expect("server");

    let s = start_with(move |c| c.database.url = url).await;
    let mut ws = chat(&s, "ada", "fb").await;
    assert_eq!(
        say(&mut ws, "nice demo").await["text"],
        "Send rating 4 with \"nice demo\"?"
    );
    assert_eq!(
        say(&mut ws, "yes").await["text"],
        "Thank you! Your feedback (4/5) is saved."
    );
    s.stop.cancel();
    s.task.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_listed_created_validated_updated_and_deleted_through_the_api() {
    let s = start().await;
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{}/api/v1/rules{path}", s.base);
    let mut ws = chat(&s, "ada", "api-rules").await;
    let mut ask = async move |text: &str| text_of(&say(&mut ws, text).await);

    let list: Value = http
        .get(api(""))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let echo = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["rule"]["name"] == "echo")
        .expect("the demo's echo rule");
    assert_eq!(echo["source"], "file");
    assert!(
        echo["location"]
            .as_str()
            .expect("location")
            .starts_with("bins/rules/demo.toml (built in):"),
        "{echo}"
    );

    let ping = json!({"name": "ping", "priority": 5, "when": {"text": "ping"}, "then": [{"reply": "pong"}]});
    let res = http.post(api("")).json(&ping).send().await.expect("create");
    assert_eq!(res.status().as_u16(), 201);
    let created: Value = res.json().await.expect("json");
    assert_eq!(
        (created["source"].as_str(), created["rule"]["name"].as_str()),
        (Some("api"), Some("ping"))
    );
    assert_eq!(ask("ping").await, "pong");
    let again = http.post(api("")).json(&ping).send().await.expect("create");
    assert!(
        problem(again, 409).await["detail"]
            .as_str()
            .expect("detail")
            .contains("'ping' exists")
    );
    let clash = json!({"name": "echo", "when": {"text": "x"}});
    assert!(
        problem(
            http.post(api(""))
                .json(&clash)
                .send()
                .await
                .expect("create"),
            409
        )
        .await["detail"]
            .as_str()
            .expect("detail")
            .contains("bins/rules/demo.toml")
    );

    // Bad rules: named, never stored.
    let bad = json!({"name": "bad", "then": [{"call": {"action": "sned"}}]});
    let detail = problem(
        http.post(api("")).json(&bad).send().await.expect("create"),
        422,
    )
    .await["detail"]
        .as_str()
        .expect("detail")
        .to_owned();
    assert!(
        detail.contains("rule 'bad'") && detail.contains("unknown action 'sned'"),
        "{detail}"
    );
    let unknown = json!({"name": "u", "wen": {}});
    assert!(
        problem(
            http.post(api(""))
                .json(&unknown)
                .send()
                .await
                .expect("create"),
            422
        )
        .await["detail"]
            .as_str()
            .expect("detail")
            .contains("unknown field `wen`")
    );
    let malformed = http
        .post(api(""))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("create");
    assert_eq!(malformed.status().as_u16(), 400);
    assert_eq!(
        http.get(api("/bad"))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        404
    );

    // Validation without storing.
    let res = http
        .post(api("/validate"))
        .json(&ping)
        .send()
        .await
        .expect("validate");
    assert_eq!(res.status().as_u16(), 200);
    let bad_regex = json!({"name": "r", "when": {"regex": "("}});
    assert!(
        problem(
            http.post(api("/validate"))
                .json(&bad_regex)
                .send()
                .await
                .expect("v"),
            422
        )
        .await["detail"]
            .as_str()
            .expect("detail")
            .contains("regex")
    );

    // Update, then delete.
    let loud = json!({"name": "ping", "priority": 5, "when": {"text": "ping"}, "then": [{"reply": "PONG"}]});
    let res = http
        .put(api("/ping"))
        .json(&loud)
        .send()
        .await
        .expect("update");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(ask("ping").await, "PONG");
    assert_eq!(
        http.get(api("/ping"))
            .send()
            .await
            .expect("get")
            .json::<Value>()
            .await
            .expect("json")["rule"]["then"][0]["reply"],
        "PONG"
    );
    let renamed = http
        .put(api("/ping"))
        .json(&clash)
        .send()
        .await
        .expect("update");
    assert!(
        problem(renamed, 422).await["detail"]
            .as_str()
            .expect("detail")
            .contains("not renamed")
    );
    let file_rule = http
        .put(api("/echo"))
        .json(&json!({"name": "echo"}))
        .send()
        .await
        .expect("update");
    assert!(
        problem(file_rule, 409).await["detail"]
            .as_str()
            .expect("detail")
            .contains("edit the file")
    );
    let res = http.delete(api("/ping")).send().await.expect("delete");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(ask("ping").await, "I didn't understand that. Try /help.");
    assert_eq!(
        problem(http.delete(api("/ping")).send().await.expect("delete"), 404).await["status"],
        404
    );
    s.stop.cancel();
    s.task.await.expect("server");
}
