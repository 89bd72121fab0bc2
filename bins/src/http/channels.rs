//! The channel routes in the OpenAPI document: they are mounted from `flowbot-channels`
//! (web chat, webhooks, the platform adapters), not generated from handlers here.

use serde_json::{Value, json};

/// Which channel routes a server mounts, for [`channel_docs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelRoutes {
    /// `/chat` and `/ws/chat`.
    pub web: bool,
    /// `/hooks/webhook/{channel}`.
    pub webhooks: bool,
    /// `/hooks/telegram/{channel}`.
    pub telegram: bool,
    /// `/hooks/tailchat/{channel}`.
    pub tailchat: bool,
    /// `/hooks/slack/{channel}/events`, `/interactions`, `/commands`.
    pub slack: bool,
    /// `/hooks/discord/{channel}/interactions`.
    pub discord: bool,
}

/// The webhook channel's body with `given` (`text` or `button`) and without `absent`.
fn webhook_body(given: &str, absent: &str) -> Value {
    let text = |max: u32| json!({"type": "string", "pattern": "\\S", "maxLength": max});
    json!({"type": "object", "required": ["user", "conversation", given],
        "properties": {"user": text(200), "conversation": text(200), given: text(16384),
            absent: {"type": "null"}, "id": {"type": ["string", "null"], "pattern": "\\S", "maxLength": 200},
            "name": {"type": ["string", "null"]}}})
}

/// Document the channel routes (mounted from `flowbot-channels`) in `doc`.
pub fn channel_docs(doc: &mut utoipa::openapi::OpenApi, routes: ChannelRoutes) {
    let ChannelRoutes {
        web,
        webhooks,
        telegram,
        tailchat,
        slack,
        discord,
    } = routes;
    let mut extra: Value = json!({});
    extra["/api/v1/openapi.json"] = json!({"get": {"tags": ["health"], "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}}}});
    if web {
        extra["/chat"] = json!({"get": {"tags": ["channels"], "summary": "The web chat page", "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}}});
        extra["/ws/chat"] = json!({"get": {"tags": ["channels"], "summary": "Web chat WebSocket (JSON text frames; see docs/configuration.md)",
            "parameters": [
                {"name": "user", "in": "query", "required": false, "schema": {"type": "string"}, "description": "the user to resume, with its token"},
                {"name": "conversation", "in": "query", "required": false, "schema": {"type": "string"}, "description": "the conversation to resume, with its token"},
                {"name": "token", "in": "query", "required": false, "schema": {"type": "string"}, "description": "the visitor token of a previous welcome frame; without a valid one for this user and conversation, the socket gets new ids"},
                {"name": "identity", "in": "query", "required": false, "schema": {"type": "string"}, "description": "a JWT from the site embedding the chat ([web.host_identity])"}],
            "responses": {"101": {"description": "Switching to the WebSocket protocol"}, "400": {"description": "Not a WebSocket request or bad ids", "content": {"application/problem+json": {}}}, "429": {"description": "Too many connections or requests from this address", "content": {"application/problem+json": {}}}}}});
    }
    if webhooks {
        extra["/hooks/webhook/{channel}"] = json!({"post": {"tags": ["channels"], "summary": "Generic webhook: a message in; 202 once durably stored",
            "parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "X-FlowBot-Signature", "in": "header", "required": false, "schema": {"type": "string"}, "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\"> (required when the channel has a secret)"}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "description": "A message (text) or a clicked button's value (button), not both. user, conversation and id are at most 200 bytes, text and button at most 16384; none may be blank.",
                "oneOf": [webhook_body("text", "button"), webhook_body("button", "text")]},
                "example": {"user": "ada", "conversation": "support-1", "text": "hello"}}}},
            "responses": {"202": {"description": "Stored", "content": {"application/json": {"schema": {"type": "object", "properties": {"id": {"type": "string"}}}}}},
                          "400": {"description": "Malformed JSON"}, "401": {"description": "Bad signature"}, "404": {"description": "Unknown channel"},
                          "413": {"description": "Body too large"}, "415": {"description": "Not JSON"}, "422": {"description": "Missing or invalid fields"}, "503": {"description": "Database unavailable"}}}});
    }
    if telegram {
        extra["/hooks/telegram/{channel}"] = json!({"post": {"tags": ["channels"], "summary": "Telegram webhook: one Bot API update; 200 once durably stored",
            "parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "X-Telegram-Bot-Api-Secret-Token", "in": "header", "required": true, "schema": {"type": "string"}, "description": "The channel's secret_token, as given to setWebhook"}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["update_id"], "properties": {"update_id": {"type": "integer"}}}}}},
            "responses": {"200": {"description": "Stored (or ignored and counted)"}, "400": {"description": "Malformed JSON"}, "401": {"description": "Missing or wrong secret token"},
                          "404": {"description": "Unknown channel, or a channel that polls"}, "413": {"description": "Body too large"}, "422": {"description": "Not a Bot API update"}, "503": {"description": "Database unavailable"}}}});
    }
    if tailchat {
        extra["/hooks/tailchat/{channel}"] = json!({"post": {"tags": ["channels"], "summary": "Tailchat bot callback (a mention of the bot); 200 once durably stored",
            "parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "token", "in": "query", "required": true, "schema": {"type": "string"}, "description": "The channel's callback_token"}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["type"],
                "properties": {"type": {"type": "string"}, "payload": {"type": "object", "required": ["converseId", "messageId", "messageAuthor"],
                    "properties": {"groupId": {"type": "string"}, "converseId": {"type": "string"}, "messageId": {"type": "string"}, "messageAuthor": {"type": "string"},
                                   "messageSnippet": {"type": "string"}, "messagePlainContent": {"type": "string"}}}}}}}},
            "responses": {"200": {"description": "Stored (or ignored and counted)"}, "400": {"description": "Malformed JSON"}, "401": {"description": "Missing or wrong token"},
                          "404": {"description": "Unknown channel"}, "413": {"description": "Body too large"}, "422": {"description": "Not a Tailchat callback"}, "503": {"description": "Database unavailable"}}}});
    }
    if slack {
        let signed = json!([{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}},
            {"name": "X-Slack-Signature", "in": "header", "required": true, "schema": {"type": "string"}, "description": "v0=<hex HMAC-SHA256 of \"v0:<timestamp>:<body>\"> with the signing secret"},
            {"name": "X-Slack-Request-Timestamp", "in": "header", "required": true, "schema": {"type": "integer"}, "description": "Unix seconds; at most 5 minutes from now"}]);
        let answers = json!({"200": {"description": "Stored (or ignored and counted)"}, "400": {"description": "Malformed body"}, "401": {"description": "Missing, wrong or expired signature"},
            "404": {"description": "Unknown channel"}, "413": {"description": "Body too large"}, "422": {"description": "Not a Slack payload"}, "503": {"description": "Database unavailable"}});
        for (path, summary, content) in [
            (
                "events",
                "Slack Events API: url_verification, or an event callback; 200 once durably stored",
                "application/json",
            ),
            (
                "interactions",
                "Slack interactivity: block actions (form field payload)",
                "application/x-www-form-urlencoded",
            ),
            (
                "commands",
                "Slack slash commands (form fields command, text, user_id, channel_id, …)",
                "application/x-www-form-urlencoded",
            ),
        ] {
            extra[format!("/hooks/slack/{{channel}}/{path}")] = json!({"post": {"tags": ["channels"], "summary": summary, "parameters": signed,
                "requestBody": {"required": true, "content": {content: {}}}, "responses": answers}});
        }
    }
    if discord {
        extra["/hooks/discord/{channel}/interactions"] = json!({"post": {"tags": ["channels"], "summary": "Discord interactions (slash commands, button clicks): PING answered, the rest stored and acknowledged with a deferred response",
            "parameters": [{"name": "channel", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "X-Signature-Ed25519", "in": "header", "required": true, "schema": {"type": "string"}, "description": "Ed25519 signature of timestamp + body, hex"},
                           {"name": "X-Signature-Timestamp", "in": "header", "required": true, "schema": {"type": "string"}, "description": "Unix seconds; at most 5 minutes from now"}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "integer"}}}}}},
            "responses": {"200": {"description": "Interaction response (PONG, deferred message, deferred update)", "content": {"application/json": {}}},
                          "400": {"description": "Malformed JSON"}, "401": {"description": "Missing, wrong or expired signature"},
                          "404": {"description": "Unknown channel"}, "413": {"description": "Body too large"}, "422": {"description": "Not an interaction"}, "503": {"description": "Database unavailable"}}}});
    }
    // Only the added paths go through serde: utoipa cannot read back every schema it writes
    // (a schema of any type, such as a `serde_json::Value` field's, has no `type`).
    let mut added = std::collections::BTreeMap::new();
    if let Value::Object(extra) = extra {
        for (path, item) in extra {
            match serde_json::from_value::<utoipa::openapi::PathItem>(item) {
                Ok(item) => {
                    added.insert(path, item);
                }
                Err(e) => tracing::error!(%path, error = %e, "cannot document a channel route"),
            }
        }
    }
    super::document::complete(&mut added);
    doc.paths.paths.extend(added);
}
