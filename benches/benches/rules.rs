//! Rules engine benchmarks (criterion): routing one message against 1,000 rules, a rhai
//! condition next to the same check as a native condition, and compiling 1,000 rules (what a
//! hot reload costs). Run with `cargo bench -p flowbot-bench --bench rules`; the per-message
//! percentiles and the ratios are printed at the end.
#![allow(clippy::print_stdout, missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use flowbot_core::{Event, Message, Sender};
use flowbot_rules::{CustomCondition, Facts, Plugins, RuleSet, RulesRouter, Source};
use serde_json::Map;

/// 1,000 rules: 400 commands, 300 keyword rules, 200 regexes, 100 with rhai conditions
/// (each behind a keyword, as real rules put them), and a fallback.
fn thousand_rules() -> String {
    let mut s = String::new();
    for i in 0..400 {
        s += &format!(
            "[[rule]]\nname = \"cmd{i}\"\nwhen = {{ command = \"cmd{i} <n:int> <text...>\" }}\nthen = [{{ reply = \"{{{{ args.text }}}}\" }}]\n\n"
        );
    }
    for i in 0..300 {
        s += &format!(
            "[[rule]]\nname = \"kw{i}\"\nwhen = {{ keywords = [\"alpha{i}\", \"beta {i}\"] }}\nthen = [{{ reply = \"kw {i}\" }}]\n\n"
        );
    }
    for i in 0..200 {
        s += &format!(
            "[[rule]]\nname = \"re{i}\"\nwhen = {{ regex = 'order{i}-(?P<n>\\d+)' }}\nthen = [{{ reply = \"order {{{{ captures.n }}}}\" }}]\n\n"
        );
    }
    for i in 0..99 {
        s += &format!(
            "[[rule]]\nname = \"rhai{i}\"\nwhen = {{ keywords = [\"topic{i}\"], script = 'text.len() > 10 && user != \"blocked\"' }}\nthen = [{{ reply = \"topic {i}\" }}]\n\n"
        );
    }
    s += "[[rule]]\nname = \"fallback\"\npriority = -1\nthen = [{ reply = \"?\" }]\n";
    s
}

fn event(user: &str, text: &str) -> Event {
    Event::Message(Message::text("web", "room", Sender::user(user), text))
}

/// The messages routed, round robin: one per kind of rule, and one that only the fallback takes.
fn messages() -> Vec<Event> {
    vec![
        event("ada", "/cmd377 3 hello there"),
        event("ada", "tell me about beta 250 please"),
        event("ada", "where is order150-991?"),
        event("ada", "what about topic77 then"),
        event("ada", "nothing matches this one at all"),
    ]
}

struct Native;

impl CustomCondition for Native {
    fn matches(&self, f: &Facts<'_>) -> bool {
        let user = f.event.sender().map(|s| s.id.as_str()).unwrap_or_default();
        // rhai's `len()` counts characters: the same check.
        f.text.chars().count() > 10 && user == "ada"
    }
}

fn one_rule(when: &str) -> RulesRouter {
    one_rule_with(when, Plugins::default())
}

fn one_rule_with(when: &str, plugins: Plugins) -> RulesRouter {
    let plugins = plugins.condition("native", |_| Ok(Native));
    let text = format!("[[rule]]\nname = \"r\"\nwhen = {when}\nthen = [{{ reply = \"x\" }}]\n");
    RulesRouter::new(RuleSet::compile(&[Source::inline(text)], &plugins).unwrap())
}

fn bench(c: &mut Criterion) {
    let source = thousand_rules();
    let plugins = Plugins::default();
    let router =
        RulesRouter::new(RuleSet::compile(&[Source::inline(source.clone())], &plugins).unwrap());
    let session = Map::new();
    let msgs = messages();
    // Check the mix routes where it should before timing it.
    let names: Vec<Vec<String>> = msgs
        .iter()
        .map(|m| router.matching(m, &session, None).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            vec!["cmd377"],
            vec!["kw250"],
            vec!["re150"],
            vec!["rhai77"],
            vec!["fallback"]
        ]
    );

    let mut i = 0;
    c.bench_function("route 1 message / 1000 rules (mix)", |b| {
        b.iter(|| {
            i = (i + 1) % msgs.len();
            black_box(router.matching(&msgs[i], &session, None).unwrap())
        })
    });

    let rhai = one_rule("{ script = 'text.len() > 10 && user == \"ada\"' }");
    let native = one_rule("{ custom = { kind = \"native\" } }");
    // The same condition always interpreted: an engine the application extended keeps every
    // condition in rhai (the path of conditions outside the native subset).
    let interpreted = {
        let mut scripting = flowbot_rules::Scripting::default();
        scripting.engine_mut().register_fn("unused", || 0_i64);
        one_rule_with(
            "{ script = 'text.len() > 10 && user == \"ada\"' }",
            Plugins::default().scripting(scripting),
        )
    };
    let msg = event("ada", "a message long enough");
    assert_eq!(rhai.matching(&msg, &session, None).unwrap(), ["r"]);
    assert_eq!(native.matching(&msg, &session, None).unwrap(), ["r"]);
    assert_eq!(interpreted.matching(&msg, &session, None).unwrap(), ["r"]);
    c.bench_function("condition: rhai", |b| {
        b.iter(|| black_box(rhai.matching(&msg, &session, None).unwrap()))
    });
    c.bench_function("condition: rhai, interpreted", |b| {
        b.iter(|| black_box(interpreted.matching(&msg, &session, None).unwrap()))
    });
    c.bench_function("condition: native closure", |b| {
        b.iter(|| black_box(native.matching(&msg, &session, None).unwrap()))
    });

    let sources = [Source::inline(source)];
    c.bench_function("compile 1000 rules (hot reload)", |b| {
        b.iter(|| black_box(RuleSet::compile(&sources, &plugins).unwrap()))
    });

    // Per-message percentiles and ratios, measured here in the same run.
    let mut lat = Vec::with_capacity(50_000);
    for n in 0..50_000 {
        let m = &msgs[n % msgs.len()];
        let t = Instant::now();
        black_box(router.matching(m, &session, None).unwrap());
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let per = |r: &RulesRouter| {
        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(r.matching(&msg, &session, None).unwrap());
        }
        t.elapsed() / n
    };
    let (rhai_t, native_t, interpreted_t) = (per(&rhai), per(&native), per(&interpreted));
    // The floor: the same expression in a bare rhai engine, with its two variables pushed
    // into a fresh scope, as any embedder evaluates it (no routing, no FlowBot).
    let bare = {
        let engine = flowbot_rules::rhai::Engine::new();
        let ast = engine
            .compile_expression(r#"text.len() > 10 && user == "ada""#)
            .unwrap();
        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            let mut scope = flowbot_rules::rhai::Scope::new();
            scope.push_constant("text", "a message long enough".to_owned());
            scope.push_constant("user", "ada".to_owned());
            black_box(
                engine
                    .eval_ast_with_scope::<bool>(&mut scope, &ast)
                    .unwrap(),
            );
        }
        t.elapsed() / n
    };
    let reload = {
        let runs = 10u32;
        let t = Instant::now();
        for _ in 0..runs {
            black_box(RuleSet::compile(&sources, &plugins).unwrap());
        }
        t.elapsed() / runs
    };
    println!("\n== flowbot-rules summary ==");
    println!(
        "route 1 message / 1000 rules: p50 {:?}, p99 {:?} (target p50 < 20 µs)",
        pct(0.50),
        pct(0.99)
    );
    println!(
        "rhai condition {:?} vs native {:?}: {:.2}x (target ≤ 5x)",
        rhai_t,
        native_t,
        rhai_t.as_secs_f64() / native_t.as_secs_f64()
    );
    println!(
        "the same condition always interpreted {:?}: {:.2}x native",
        interpreted_t,
        interpreted_t.as_secs_f64() / native_t.as_secs_f64()
    );
    println!(
        "the same expression in a bare rhai engine (no routing): {bare:?}, {:.2}x native routing",
        bare.as_secs_f64() / native_t.as_secs_f64()
    );
    println!("compile 1000 rules: {reload:?} (target < 200 ms)");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().final_summary();
}
