//! `[network]`: what outbound calls whose URL comes from a runtime-editable source (the
//! `http_request` action in rules, workflows and a model's tool calls) may reach.

use flowbot_core::net::NetPolicy;
use serde::Deserialize;

use super::{ConfigError, err};

/// `[network]`. By default `http_request` reaches public addresses over http and https
/// only: loopback, private, link-local, unique-local and cloud metadata addresses are
/// refused, checked on the address connected and again at each redirect. URLs written in
/// this file (adapters' `api_base`, webhook callbacks, notifiers, model providers) are not
/// guarded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// What `http_request` may reach although the guard refuses it: IP addresses, CIDR
    /// networks and host names, each optionally with a port (`"10.0.0.5:8080"`,
    /// `"[::1]:8080"`, `"10.0.0.0/8"`, `"[fd00::/8]:443"`, `"billing.internal"`).
    pub allow: Vec<String>,
}

impl NetworkConfig {
    /// The guard's policy for these settings; an allow-list entry that does not parse is an
    /// error at `network.allow` naming it.
    pub fn policy(&self) -> Result<NetPolicy, ConfigError> {
        NetPolicy::allowing(&self.allow).map_err(|e| err("network.allow", e.to_string()))
    }

    /// Check the section, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.policy().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Load from a file of its own.
    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let path =
            std::env::temp_dir().join(format!("flowbot-network-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, toml_text).map_err(|e| err("test", e.to_string()))?;
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        let config = Config::load(Some(&path), env);
        let _ = std::fs::remove_file(&path);
        config
    }

    #[test]
    fn the_allow_list_is_read_from_the_file_and_the_environment() -> Result<(), ConfigError> {
        assert_eq!(Config::default().network.policy()?, NetPolicy::default());
        let c = load("[network]\nallow = [\"10.0.0.0/8\", \"[::1]:8080\"]\n", &[])?;
        assert_eq!(c.network.allow, ["10.0.0.0/8", "[::1]:8080"]);
        assert_eq!(c.network.policy()?.allowed().len(), 2);
        // The example of docs/configuration.md.
        let c = load(
            r#"
[network]
allow = [
  "10.0.0.5:8080",      # this address, on this port only
  "192.168.10.0/24",    # a network, every port
  "[::1]:9000",         # IPv6 with a port, in brackets
  "billing.internal",   # a name, whatever it resolves to
]
"#,
            &[],
        )?;
        assert_eq!(c.network.policy()?.allowed().len(), 4);
        let c = load("", &[("FLOWBOT_NETWORK__ALLOW", "[\"127.0.0.1\"]")])?;
        assert_eq!(c.network.allow, ["127.0.0.1"]);
        Ok(())
    }

    #[test]
    fn errors_name_the_key_and_the_entry() {
        let e = load("[network]\nallow = [\"127.0.0.1\", \"10.0.0.0/33\"]\n", &[])
            .expect_err("a bad entry");
        assert_eq!(e.path, "network.allow");
        assert!(
            e.message
                .starts_with("'10.0.0.0/33' is not a valid network allow-list entry"),
            "{e}"
        );
        let e = load("[network]\nalow = []\n", &[]).expect_err("an unknown key");
        assert_eq!(e.path, "network.alow");
        let e = load("[network]\nallow = \"127.0.0.1\"\n", &[]).expect_err("not a list");
        assert_eq!(e.path, "network", "{e}");
    }
}
