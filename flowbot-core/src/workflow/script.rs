//! The scripting hook of workflows: condition and script nodes run rhai through this trait,
//! which `flowbot-rules` implements with its sandboxed engine (core does not depend on rhai).

use serde_json::{Map, Value};

/// Runs scripts for workflow nodes. Implementations must be sandboxed (operation, size and
/// wall-time limits) and must not block for long.
pub trait ScriptEngine: Send + Sync + 'static {
    /// Check that `source` compiles, with `variables` as the only free variable names.
    /// `expression` is true for a single expression (condition nodes).
    fn check(&self, source: &str, expression: bool, variables: &[&str]) -> Result<(), String>;

    /// Evaluate `source` with `variables` bound; the script's value as JSON.
    fn eval(
        &self,
        source: &str,
        expression: bool,
        variables: &Map<String, Value>,
    ) -> Result<Value, String>;
}

/// Names a workflow script can use: the run's inputs, earlier nodes' outputs and the run.
pub const SCRIPT_VARIABLES: [&str; 3] = ["inputs", "nodes", "run"];
