//! rhai for workflow nodes: [`WorkflowScripts`] implements core's
//! [`ScriptEngine`](flowbot_core::workflow::ScriptEngine) with the same sandbox as rules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowbot_core::workflow::ScriptEngine;
use rhai::AST;
use serde_json::{Map, Value};

use crate::script::Scripting;

/// Most compiled workflow scripts kept; the cache starts over when it is full.
const CACHE_LIMIT: usize = 1024;

/// The scripting engine workflows use for condition and script nodes: the rules engine's
/// sandboxed rhai, with compiled scripts cached by source.
pub struct WorkflowScripts {
    scripting: Scripting,
    cache: Mutex<HashMap<(String, bool), Arc<AST>>>,
}

impl std::fmt::Debug for WorkflowScripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowScripts")
            .field("scripting", &self.scripting)
            .finish_non_exhaustive()
    }
}

impl WorkflowScripts {
    /// Workflow scripts on `scripting` (its limits and registered functions).
    pub fn new(scripting: Scripting) -> Self {
        WorkflowScripts {
            scripting,
            cache: Mutex::default(),
        }
    }

    fn compiled(&self, source: &str, expression: bool, names: &[&str]) -> Result<Arc<AST>, String> {
        let key = (source.to_owned(), expression);
        if let Some(ast) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(ast);
        }
        let ast = self.scripting.compile_with(source, expression, names)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, ast.clone());
        }
        Ok(ast)
    }
}

impl Default for WorkflowScripts {
    fn default() -> Self {
        WorkflowScripts::new(Scripting::default())
    }
}

impl ScriptEngine for WorkflowScripts {
    fn check(&self, source: &str, expression: bool, variables: &[&str]) -> Result<(), String> {
        self.scripting
            .compile_with(source, expression, variables)
            .map(|_| ())
    }

    fn eval(
        &self,
        source: &str,
        expression: bool,
        variables: &Map<String, Value>,
    ) -> Result<Value, String> {
        let names: Vec<&str> = variables.keys().map(String::as_str).collect();
        let ast = self.compiled(source, expression, &names)?;
        let mut scope = rhai::Scope::new();
        for (name, value) in variables {
            let v = rhai::serde::to_dynamic(value).map_err(|e| e.to_string())?;
            scope.push_constant_dynamic(name.clone(), v);
        }
        let out = self.scripting.eval(&mut scope, &ast)?;
        rhai::serde::from_dynamic(&out).map_err(|e| format!("the script's value is not JSON: {e}"))
    }
}
