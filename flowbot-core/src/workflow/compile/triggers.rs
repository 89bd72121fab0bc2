//! The checks of a workflow's triggers: hooks and their secrets, cron expressions and their
//! inputs, event names.

use super::*;

pub(super) fn check_triggers(wf: &Workflow, cx: CheckContext<'_>, p: &mut Problems) {
    for (i, t) in wf.spec.triggers.iter().enumerate() {
        let at = |f: &str| format!("triggers[{i}].{f}");
        let count = [t.hook.is_some(), t.cron.is_some(), t.event.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if count != 1 {
            p.top(
                format!("triggers[{i}]"),
                "a trigger has exactly one of `hook`, `cron` and `event`",
            );
            continue;
        }
        if t.hook.is_none() && (t.token_secret.is_some() || t.hmac_secret.is_some()) {
            p.top(
                at("token_secret"),
                "`token_secret` and `hmac_secret` belong to a `hook` trigger",
            );
        }
        if t.cron.is_none() && t.timezone.is_some() {
            p.top(at("timezone"), "`timezone` belongs to a `cron` trigger");
        }
        if let Some(path) = &t.hook {
            if !valid_name(path) {
                p.top(
                    at("hook"),
                    format!(
                        "'{path}' is not a valid hook path: use letters, digits, '_', '-' or '.'"
                    ),
                );
            }
            match (&t.token_secret, &t.hmac_secret) {
                (None, None) => p.top(
                    at("hook"),
                    "a hook needs `token_secret` (bearer token) or `hmac_secret` (signed body), so that not anyone can start runs",
                ),
                (Some(_), Some(_)) => p.top(at("hook"), "give `token_secret` or `hmac_secret`, not both"),
                (Some(s), None) | (None, Some(s)) => {
                    if !cx.secrets.contains(s) {
                        p.top(
                            at(if t.token_secret.is_some() { "token_secret" } else { "hmac_secret" }),
                            format!("no secret named `{s}` is configured"),
                        );
                    }
                }
            }
            if t.input.is_some() {
                p.top(
                    at("input"),
                    "a hook's inputs are the request body; `input` belongs to cron triggers",
                );
            }
        }
        if let Some(expr) = &t.cron {
            let tz = t.timezone.as_deref().unwrap_or("UTC");
            if let Err(e) = CronSpec::parse(expr, tz) {
                p.top(at("cron"), e.to_string());
            }
            if let Err(e) = wf.prepare_inputs(t.input.clone().unwrap_or(Value::Null)) {
                p.top(at("input"), e.0);
            }
        }
        if let Some(name) = &t.event {
            if !valid_name(name) {
                p.top(
                    at("event"),
                    format!(
                        "'{name}' is not a valid event name: use letters, digits, '_', '-' or '.'"
                    ),
                );
            }
            if t.input.is_some() {
                p.top(
                    at("input"),
                    "an event's inputs are its payload; `input` belongs to cron triggers",
                );
            }
        }
    }
}
