//! Every rule example in docs/rules.md, and the demo rules the server ships, compile and
//! follow docs/rules.schema.json.

use flowbot_rules::{Facts, Plugins, RuleSet, Source};

struct Long(usize);

impl flowbot_rules::CustomCondition for Long {
    fn matches(&self, f: &Facts<'_>) -> bool {
        f.text.len() >= self.0
    }
}

fn schema() -> jsonschema::Validator {
    let text = include_str!("../../docs/rules.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema is a JSON Schema")
}

fn check(name: &str, toml_text: &str, schema: &jsonschema::Validator) {
    let value: serde_json::Value =
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{name}: {e}"));
    if let Some(e) = schema.iter_errors(&value).next() {
        panic!(
            "{name}: does not follow the schema: {e} at {}",
            e.instance_path()
        );
    }
    let plugins = Plugins::default().condition("long_text", |args| {
        Ok(Long(args["min"].as_u64().unwrap_or(0) as usize))
    });
    RuleSet::compile(&[Source::inline(toml_text)], &plugins)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

#[test]
fn examples_in_the_rules_guide_compile_and_follow_the_schema() {
    let schema = schema();
    let doc = include_str!("../../docs/rules.md");
    let mut blocks = 0;
    let mut rest = doc;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed block");
        let block = &body[..end];
        rest = &body[end + 3..];
        if block.contains("[rules]") {
            continue; // the server configuration example, not a rule file
        }
        blocks += 1;
        check(&format!("docs/rules.md block {blocks}"), block, &schema);
    }
    assert!(blocks >= 5, "found {blocks} rule examples");
}

#[test]
fn the_demo_rules_compile_and_follow_the_schema() {
    check(
        "bins/rules/demo.toml",
        include_str!("../../bins/rules/demo.toml"),
        &schema(),
    );
}

#[test]
fn the_schema_rejects_what_the_compiler_rejects() {
    let schema = schema();
    for bad in [
        "[[rule]]\nname = \"a b\"",
        "[[rule]]\nname = \"a\"\nwhen = { comand = \"x\" }",
        "[[rule]]\nname = \"a\"\nthen = [{ reply = \"x\", clear = \"y\" }]",
        "[[rule]]\nname = \"a\"\nwhen = { event = \"typing\" }",
    ] {
        let value: serde_json::Value = toml::from_str(bad).expect("toml");
        assert!(!schema.is_valid(&value), "schema accepted {bad}");
        assert!(
            RuleSet::compile(&[Source::inline(bad)], &Plugins::default()).is_err(),
            "compiler accepted {bad}"
        );
    }
}
