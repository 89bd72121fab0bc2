//! The demo bot of the default configuration (and of the examples).
//!
//! The demo bot answers `/help`, `/echo <text>` and `/remind <duration> <text>`; a reminder
//! is a delayed task on the durable queue, so it arrives even if the process restarts in
//! between.

use std::time::Duration;

use flowbot_core::task::NewTask;
use flowbot_core::{DELIVER_TASK, HandlerCx, HandlerResult, Handlers, Outbound, Refusal, Reply};

/// Longest reminder delay the demo accepts.
pub const MAX_REMINDER: Duration = Duration::from_secs(30 * 24 * 3600);

/// The demo bot's commands and their one-line help.
pub const COMMANDS: &[(&str, &str)] = &[
    ("/help", "list the commands"),
    ("/echo <text>", "answer with <text>"),
    (
        "/remind <duration> <text>",
        "remind you of <text> later, e.g. /remind 2s hello or /remind 1h30m stretch",
    ),
];

/// The demo bot's router: `/help`, `/echo`, `/remind`, and a hint for anything else.
pub fn demo_router() -> Handlers<()> {
    Handlers::new(())
        .command("help", |_cx| async move { Ok(Reply::text(help_text())) })
        .command("echo", |cx| async move {
            Ok(Reply::text(if cx.args.is_empty() {
                "Usage: /echo <text>".to_owned()
            } else {
                cx.args
            }))
        })
        .command("remind", remind)
        .fallback(|cx| async move {
            if cx.turn.text().is_some() {
                Ok(Reply::text("I didn't understand that. Try /help."))
            } else {
                Ok(Reply::none())
            }
        })
}

/// The text `/help` answers with.
pub fn help_text() -> String {
    let mut s = String::from("Commands:");
    for (cmd, what) in COMMANDS {
        s.push_str(&format!("\n{cmd} — {what}"));
    }
    s
}

/// Parse `/remind` arguments into a delay and the reminder text; the refusal says what to
/// write instead.
pub fn parse_remind(args: &str) -> Result<(Duration, String), Refusal> {
    let usage = || Refusal::new("Usage: /remind <duration> <text>, e.g. /remind 2s hello");
    let (when, text) = args.split_once(char::is_whitespace).ok_or_else(usage)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(usage());
    }
    let delay = humantime::parse_duration(when).map_err(|e| {
        Refusal::new(format!(
            "'{when}' is not a duration ({e}); try 10s, 5m or 1h30m"
        ))
    })?;
    if delay.is_zero() {
        return Err(Refusal::new("The delay must be more than zero."));
    }
    if delay > MAX_REMINDER {
        return Err(Refusal::new("Reminders can be at most 30 days away."));
    }
    Ok((delay, text.to_owned()))
}

async fn remind(cx: HandlerCx<()>) -> HandlerResult {
    let (delay, text) = match parse_remind(&cx.args) {
        Ok(parsed) => parsed,
        Err(hint) => return Ok(Reply::text(hint.0)),
    };
    let Some(target) = cx.turn.source() else {
        return Ok(Reply::none());
    };
    let reminder = Outbound::text(format!("⏰ Reminder: {text}")).to(target);
    let task = NewTask::new(DELIVER_TASK, &reminder)?.delay(delay);
    cx.turn.services.tasks()?.enqueue(task).await?;
    Ok(Reply::text(format!(
        "OK, I'll remind you in {}.",
        humantime::format_duration(delay)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remind_arguments() {
        assert_eq!(
            parse_remind("2s hello there").expect("valid"),
            (Duration::from_secs(2), "hello there".into())
        );
        assert_eq!(
            parse_remind("1h30m x").expect("valid").0,
            Duration::from_secs(5400)
        );
        assert!(parse_remind("").expect_err("empty").0.starts_with("Usage"));
        assert!(
            parse_remind("2s")
                .expect_err("no text")
                .0
                .starts_with("Usage")
        );
        assert!(
            parse_remind("soon hello")
                .expect_err("bad duration")
                .0
                .contains("'soon' is not a duration")
        );
        assert!(
            parse_remind("0s hello")
                .expect_err("zero")
                .0
                .contains("more than zero")
        );
        assert!(
            parse_remind("400d hello")
                .expect_err("too far")
                .0
                .contains("30 days")
        );
    }
}
