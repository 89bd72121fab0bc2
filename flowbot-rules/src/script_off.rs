//! Without the `scripts` feature there is no rhai: a rule, dialog step or action with a
//! script is refused when the rules are compiled, naming the feature.

use std::sync::Arc;

/// What compiling a script says without the feature.
const NO_SCRIPTS: &str =
    "scripts are not available: flowbot-rules was built without its `scripts` feature";

/// A compiled script: there are none.
#[derive(Debug)]
pub(crate) enum Ast {}

/// The script engine: it compiles nothing.
#[derive(Debug, Default)]
pub(crate) struct Scripting;

impl Scripting {
    /// Refuse `source`.
    pub(crate) fn compile(&self, source: &str, expression: bool) -> Result<Arc<Ast>, String> {
        let _ = (source, expression);
        Err(NO_SCRIPTS.into())
    }
}

/// A script cannot exist, so code that holds one is never reached.
pub(crate) fn never(ast: &Ast) -> ! {
    match *ast {}
}

#[cfg(test)]
mod tests {
    use crate::{Plugins, RuleSet, Source};

    #[test]
    fn scripts_are_refused_naming_the_feature_and_the_rest_compiles() {
        let scripted = [
            "[[rule]]\nname = \"a\"\nwhen = { script = \"text == 'x'\" }\nthen = [{ reply = \"x\" }]",
            "[[rule]]\nname = \"a\"\nthen = [{ script = \"reply('x')\" }]",
            "[[rule]]\nname = \"a\"\nthen = [{ dialog = \"d\" }]\n[[dialog]]\nname = \"d\"\n[[dialog.step]]\nname = \"s\"\nask = \"?\"\nexpect = { script = \"answer == 'y'\" }",
        ];
        for rules in scripted {
            let e = match RuleSet::compile(&[Source::inline(rules)], &Plugins::default()) {
                Ok(_) => panic!("compiled without the scripts feature: {rules}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("`scripts` feature"), "{e}");
        }
        let plain = "[[rule]]\nname = \"a\"\nwhen = { keywords = [\"hi\"] }\nthen = [{ reply = \"hello\" }]";
        RuleSet::compile(&[Source::inline(plain)], &Plugins::default()).expect("no script");
    }
}
