//! docs/llm.md's examples are real: each TOML block is either a server configuration that
//! loads (every key known, every value in range) or rules that compile and follow
//! docs/rules.schema.json. The Rust blocks compile as doc tests of flowbot-server
//! (`LlmGuide` in bins/src/lib.rs).

use std::path::Path;

use flowbot_server::config::Config;

fn blocks(lang: &str) -> Vec<(usize, String)> {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/llm.md"))
            .expect("docs/llm.md");
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut lines = guide.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim() == fence {
            let block: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim() != "```")
                .collect();
            out.push((n + 1, block.join("\n")));
        }
    }
    out
}

#[test]
fn every_configuration_example_loads() {
    let dir = std::env::temp_dir().join(format!(
        "flowbot-docs-llm-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut configs = 0;
    for (line, block) in blocks("toml") {
        if block.contains("[[rule]]") {
            continue;
        }
        configs += 1;
        let file = dir.join(format!("llm-{line}.toml"));
        std::fs::write(&file, &block).expect("write");
        let config = Config::load(Some(&file), Vec::new())
            .unwrap_or_else(|e| panic!("docs/llm.md:{line}: {e}"));
        if block.contains("[llm.models.") {
            assert!(
                config.llm.enabled(),
                "docs/llm.md:{line}: a model is configured"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(configs >= 3, "found {configs} configuration examples");
}

#[test]
fn every_rule_example_compiles_and_follows_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/rules.schema.json")).expect("JSON");
    let schema = jsonschema::validator_for(&schema).expect("a JSON Schema");
    let plugins = flowbot_rules::Plugins::default().action_name("http_request");
    let mut rules = 0;
    for (line, block) in blocks("toml") {
        if !block.contains("[[rule]]") {
            continue;
        }
        rules += 1;
        let value: serde_json::Value = toml::from_str(&block).expect("TOML");
        if let Some(e) = schema.iter_errors(&value).next() {
            panic!("docs/llm.md:{line}: {e} at {}", e.instance_path());
        }
        flowbot_rules::RuleSet::compile(&[flowbot_rules::Source::inline(&block)], &plugins)
            .unwrap_or_else(|e| panic!("docs/llm.md:{line}: {e}"));
    }
    assert!(rules >= 1);
}

#[test]
fn the_quick_start_is_the_readme_run_command_with_one_variable() {
    let sh = blocks("sh");
    assert_eq!(sh.len(), 1);
    assert_eq!(
        sh[0].1.trim(),
        "OPENAI_BASE_URL=http://127.0.0.1:11434/v1 cargo run -p flowbot-server"
    );
    // The variable alone configures a model.
    let config = Config::load(
        None,
        vec![(
            "OPENAI_BASE_URL".to_owned(),
            "http://127.0.0.1:11434/v1".to_owned(),
        )],
    )
    .expect("config");
    assert_eq!(config.llm.default_name(), Some("default"));
    assert_eq!(
        config.llm.models["default"].base_url.as_deref(),
        Some("http://127.0.0.1:11434/v1")
    );
}

#[test]
fn the_workflow_example_follows_the_workflow_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/workflow.schema.json")).expect("JSON");
    let schema = jsonschema::validator_for(&schema).expect("a JSON Schema");
    let yaml = blocks("yaml");
    assert_eq!(yaml.len(), 1);
    let value: serde_json::Value = serde_norway::from_str(&yaml[0].1).expect("YAML");
    if let Some(e) = schema.iter_errors(&value).next() {
        panic!("docs/llm.md:{}: {e} at {}", yaml[0].0, e.instance_path());
    }
    // It runs in bins/tests/llm.rs (a_workflow_llm_node_gives_structured_output…).
}
