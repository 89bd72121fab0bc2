//! Platform tokens, provider keys and other credentials given as `{{ secrets.NAME }}`: the
//! value comes from `[secrets]` or from the secrets stored (encrypted) through the API, read
//! once as the server or agent starts (see docs/security.md, "Secrets at rest").

use flowbot_core::secrets::{SecretStore, check_name};

use super::{Config, ConfigError, NotifierSettings, err};

/// The name a value refers to when it is written `{{ secrets.NAME }}` (spaces inside the
/// braces optional); `None` for any other value. A value in braces that is not such a
/// reference is an error, so a misspelt one does not become a token.
pub(crate) fn secret_reference(value: &str) -> Result<Option<&str>, String> {
    let Some(inner) = value
        .trim()
        .strip_prefix("{{")
        .and_then(|v| v.strip_suffix("}}"))
    else {
        return Ok(None);
    };
    let Some(name) = inner.trim().strip_prefix("secrets.") else {
        return Err("a value in {{ }} must be written {{ secrets.NAME }}".into());
    };
    check_name(name).map_err(|e| format!("{{{{ secrets.{name} }}}}: {e}"))?;
    Ok(Some(name))
}

impl Config {
    /// Every setting that may refer to a secret, by key path: platform tokens and signing
    /// secrets, provider keys, notifier credentials, webhook secrets, the OpenID client
    /// secret, Qdrant's API key.
    fn credentials(&mut self) -> Vec<(String, &mut String)> {
        let mut out: Vec<(String, &mut String)> = Vec::new();
        for (name, e) in &mut self.telegram {
            out.push((format!("telegram.{name}.token"), &mut e.token));
            if let Some(v) = &mut e.secret_token {
                out.push((format!("telegram.{name}.secret_token"), v));
            }
        }
        for (name, e) in &mut self.slack {
            out.push((format!("slack.{name}.bot_token"), &mut e.bot_token));
            out.push((
                format!("slack.{name}.signing_secret"),
                &mut e.signing_secret,
            ));
            if let Some(v) = &mut e.app_token {
                out.push((format!("slack.{name}.app_token"), v));
            }
        }
        for (name, e) in &mut self.discord {
            out.push((format!("discord.{name}.bot_token"), &mut e.bot_token));
        }
        for (name, e) in &mut self.tailchat {
            out.push((format!("tailchat.{name}.app_secret"), &mut e.app_secret));
            out.push((
                format!("tailchat.{name}.callback_token"),
                &mut e.callback_token,
            ));
        }
        for (name, m) in &mut self.llm.models {
            if let Some(v) = &mut m.api_key {
                out.push((format!("llm.models.{name}.api_key"), v));
            }
        }
        for (name, n) in &mut self.notifiers {
            let at = |key: &str| format!("notifiers.{name}.{key}");
            match n {
                NotifierSettings::Ntfy { token: Some(v), .. } => out.push((at("token"), v)),
                NotifierSettings::Webhook {
                    secret: Some(v), ..
                } => out.push((at("secret"), v)),
                NotifierSettings::SlackWebhook { url } => out.push((at("url"), url)),
                NotifierSettings::Pushover { token, user, .. } => {
                    out.push((at("token"), token));
                    out.push((at("user"), user));
                }
                NotifierSettings::Email(email) => {
                    if let Some(v) = &mut email.password {
                        out.push((at("password"), v));
                    }
                }
                // No secret given, or a kind added to flowbot-channels later (its secrets are
                // listed here).
                _ => {}
            }
        }
        for (name, e) in &mut self.webhooks {
            if let Some(v) = &mut e.secret {
                out.push((format!("webhooks.{name}.secret"), v));
            }
        }
        if let Some(o) = &mut self.auth.oidc
            && let Some(v) = &mut o.client_secret
        {
            out.push(("auth.oidc.client_secret".into(), v));
        }
        if let Some(q) = &mut self.knowledge.qdrant
            && let Some(v) = &mut q.api_key
        {
            out.push(("knowledge.qdrant.api_key".into(), v));
        }
        out
    }

    /// Refuse `{{ secrets.NAME }}` in the secrets of the server's own signatures, which are
    /// not read from secrets: taken as they are, the reference would be the key.
    pub(super) fn refuse_unread_references(&self) -> Result<(), ConfigError> {
        let mut own: Vec<(String, &String)> = Vec::new();
        for (i, s) in self
            .auth
            .jwt
            .iter()
            .flat_map(|j| j.secrets.iter())
            .enumerate()
        {
            own.push((format!("auth.jwt.secrets[{i}]"), s));
        }
        if let Some(s) = &self.web.secret {
            own.push(("web.secret".into(), s));
        }
        for (i, s) in self
            .web
            .host_identity
            .iter()
            .flat_map(|h| h.secrets.iter())
            .enumerate()
        {
            own.push((format!("web.host_identity.secrets[{i}]"), s));
        }
        for (at, value) in own {
            if !matches!(secret_reference(value), Ok(None)) {
                return Err(err(
                    at,
                    "{{ secrets.NAME }} is not read in this setting: give the value itself (from the environment, e.g. FLOWBOT_WEB__SECRET)",
                ));
            }
        }
        Ok(())
    }

    /// How many credentials are references to secrets; an error names the first one written
    /// wrongly.
    pub(super) fn secret_references(&self) -> Result<usize, ConfigError> {
        let mut copy = self.clone();
        let mut n = 0;
        for (at, value) in copy.credentials() {
            if secret_reference(value).map_err(|e| err(at, e))?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Replace every `{{ secrets.NAME }}` among the credentials with the secret's value:
    /// from `[secrets]` when it has the name, else from `stored`. Returns how many were
    /// replaced. The error names the setting and the secret, never a value: a malformed
    /// reference, stored secrets off (`stored` is `None`), no such secret, or one that cannot
    /// be read. The configuration is checked again with the values in place; on an error it
    /// is left as it was.
    pub async fn resolve_secret_references(
        &mut self,
        stored: Option<&SecretStore>,
    ) -> Result<usize, ConfigError> {
        let configured = self.secrets.0.clone();
        let place = self.secrets_store.key_place();
        // Filled in on a copy, so that an error leaves the configuration as it was.
        let mut filled = self.clone();
        let mut replaced = 0;
        for (at, value) in filled.credentials() {
            let name = match secret_reference(value) {
                Ok(Some(name)) => name.to_owned(),
                Ok(None) => continue,
                Err(e) => return Err(err(at, e)),
            };
            let found = match (configured.get(&name), stored) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(store)) => store
                    .get(&name)
                    .await
                    .map_err(|e| err(&at, format!("reading the stored secret: {e}")))?,
                (None, None) => {
                    return Err(err(
                        at,
                        format!(
                            "refers to the secret '{name}', which is not in [secrets], and stored secrets are off (no key in {place})"
                        ),
                    ));
                }
            };
            if found
                .as_deref()
                .is_some_and(|v| !matches!(secret_reference(v), Ok(None)))
            {
                return Err(err(
                    at,
                    format!("the secret '{name}' holds another reference, not a value"),
                ));
            }
            let Some(found) = found else {
                return Err(err(
                    at,
                    format!(
                        "refers to the secret '{name}', which is neither in [secrets] nor stored (PUT /api/v1/secrets/{name})"
                    ),
                ));
            };
            *value = found;
            replaced += 1;
        }
        if replaced > 0 {
            filled.validate()?;
            *self = filled;
        }
        Ok(replaced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load_unique;

    #[test]
    fn references_are_recognised_and_checked() {
        assert_eq!(secret_reference("xoxb-1"), Ok(None));
        assert_eq!(secret_reference("{{ secrets.tg }}"), Ok(Some("tg")));
        assert_eq!(secret_reference(" {{secrets.a_b1}} "), Ok(Some("a_b1")));
        let e = secret_reference("{{ secret.tg }}").expect_err("an error");
        assert!(e.contains("{{ secrets.NAME }}"), "{e}");
        let e = secret_reference("{{ secrets.bad name }}").expect_err("an error");
        assert!(e.contains("secrets.bad name"), "{e}");
    }

    #[test]
    fn references_where_they_are_not_read_stop_the_load() {
        let e = load_unique(
            "[web]\nsecret = \"{{ secrets.a_long_enough_name_for_32_bytes }}\"\n",
            &[],
        )
        .expect_err("refused");
        assert_eq!(e.path, "web.secret");
        let e = load_unique(
            "[auth.jwt]\nsecrets = [\"{{ secrets.admin_jwt_signing_key_x }}\"]\n",
            &[],
        )
        .expect_err("refused");
        assert_eq!(e.path, "auth.jwt.secrets[0]");
    }

    #[test]
    fn a_reference_written_wrongly_stops_the_load() {
        let e = load_unique(
            "[discord.d]\nbot_token = \"{{ secret.x }}\"\napplication_id = \"1\"\n",
            &[],
        )
        .expect_err("an error");
        assert_eq!(e.path, "discord.d.bot_token");
    }

    #[tokio::test]
    async fn configured_secrets_fill_references_and_misses_name_the_setting() {
        let mut c = load_unique(
            r#"
            [secrets]
            tg = "123456:TEST-token_abcdefghijklmnop"
            [telegram.main]
            token = "{{ secrets.tg }}"
            [slack.team]
            bot_token = "xoxb-1-plain-bot-token"
            signing_secret = "{{ secrets.slack_signing }}"
            "#,
            &[],
        )
        .expect("the configuration loads");
        let e = c
            .resolve_secret_references(None)
            .await
            .expect_err("an error");
        assert_eq!(e.path, "slack.team.signing_secret");
        assert!(e.message.contains("'slack_signing'"), "{e}");
        assert!(e.message.contains("stored secrets are off"), "{e}");
        assert!(!e.to_string().contains("TEST-token"), "{e}");

        c.secrets.0.insert(
            "slack_signing".into(),
            "slack-signing-secret-0123456789".into(),
        );
        // The values are checked as they are filled in: a Telegram token must look like one.
        let mut wrong = c.clone();
        wrong.secrets.0.insert("tg".into(), "not-a-token".into());
        let e = wrong
            .resolve_secret_references(None)
            .await
            .expect_err("an error");
        assert_eq!(e.path, "telegram.main");
        assert!(!e.to_string().contains("not-a-token"), "{e}");

        assert_eq!(c.resolve_secret_references(None).await, Ok(2));
        assert_eq!(
            c.telegram["main"].token,
            "123456:TEST-token_abcdefghijklmnop"
        );
        assert_eq!(
            c.slack["team"].signing_secret,
            "slack-signing-secret-0123456789"
        );
        assert_eq!(c.slack["team"].bot_token, "xoxb-1-plain-bot-token");
    }
}
