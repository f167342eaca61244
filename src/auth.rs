//! Bearer keys to principals. Keys are compared by their SHA-256 digest, so the
//! configuration, the process and its logs only ever hold digests.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{AuthMode, Config, KeySource};
use crate::policy::AutonomyMode;

/// Who is calling: the agent a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: String,
    pub tenant: String,
    pub role: Option<String>,
    pub autonomy: AutonomyMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    MissingKey,
    #[error("invalid API key")]
    UnknownKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeySetupError {
    #[error(
        "no agent can authenticate: {0}. Set the variable to a secret of your choosing, e.g. `export WARDEN_DEV_KEY=$(openssl rand -hex 16)`, or declare `key_sha256` in the config"
    )]
    NoUsableAgent(String),
    #[error("agents `{first}` and `{second}` have the same key")]
    SharedKey { first: String, second: String },
}

pub struct KeyStore {
    by_digest: HashMap<String, Arc<Principal>>,
    open_agent: Option<Arc<Principal>>,
    admin_digest: Option<String>,
}

/// The key store and what an operator should know about it (unset variables).
pub struct KeySetup {
    pub store: KeyStore,
    pub warnings: Vec<String>,
}

impl KeyStore {
    /// `env` looks up environment variables (a closure so tests need not touch the
    /// process environment).
    pub fn from_config(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KeySetup, KeySetupError> {
        let lookup = |name: &str| env(name).filter(|value| !value.is_empty());
        let mut by_digest: HashMap<String, Arc<Principal>> = HashMap::new();
        let mut warnings = Vec::new();
        let mut unset = Vec::new();
        let mut principals = HashMap::new();
        for agent in &config.agents {
            let principal = Arc::new(Principal {
                agent_id: agent.id.clone(),
                tenant: agent.tenant.clone(),
                role: agent.role.clone(),
                autonomy: agent.autonomy,
            });
            principals.insert(agent.id.clone(), principal.clone());
            let digest = match &agent.key {
                KeySource::Sha256(digest) => digest.clone(),
                KeySource::Env(name) => match lookup(name) {
                    Some(key) => digest(&key),
                    None => {
                        unset.push(format!(
                            "agent `{}` reads its key from ${name}, which is not set",
                            agent.id
                        ));
                        continue;
                    }
                },
            };
            if let Some(other) = by_digest.insert(digest, principal) {
                return Err(KeySetupError::SharedKey {
                    first: other.agent_id.clone(),
                    second: agent.id.clone(),
                });
            }
        }
        let open_agent = match (config.auth.mode, &config.auth.open_agent) {
            (AuthMode::Open, Some(id)) => principals.get(id).cloned(),
            _ => None,
        };
        if by_digest.is_empty() && open_agent.is_none() {
            let reason = if unset.is_empty() {
                "no agents are declared".to_string()
            } else {
                unset.join("; ")
            };
            return Err(KeySetupError::NoUsableAgent(reason));
        }
        warnings.extend(unset);
        let admin_digest = lookup(&config.auth.admin_key_env).map(|key| digest(&key));
        if admin_digest.is_none() {
            warnings.push(format!(
                "${} is not set: the admin API refuses every request",
                config.auth.admin_key_env
            ));
        }
        if open_agent.is_some() {
            warnings.push("auth mode is `open`: requests without a key are served".into());
        }
        Ok(KeySetup {
            store: KeyStore {
                by_digest,
                open_agent,
                admin_digest,
            },
            warnings,
        })
    }

    pub fn authenticate(&self, key: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        match key {
            Some(key) => self
                .by_digest
                .get(&digest(key))
                .cloned()
                .ok_or(AuthError::UnknownKey),
            None => self.open_agent.clone().ok_or(AuthError::MissingKey),
        }
    }

    pub fn is_admin(&self, key: Option<&str>) -> bool {
        match (key, &self.admin_digest) {
            (Some(key), Some(admin)) => &digest(key) == admin,
            _ => false,
        }
    }
}

/// Hex SHA-256 of a key, as written in `key_sha256`.
pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml, Path::new("test.yaml")).unwrap()
    }

    const TWO_AGENTS: &str = "agents:\n  - {id: a, tenant: t1, key_env: KEY_A}\n  - {id: b, tenant: t2, key_sha256: \"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"}\n";

    #[test]
    fn keys_from_env_and_digest_both_work() {
        let setup = KeyStore::from_config(&config(TWO_AGENTS), |name| {
            (name == "KEY_A").then(|| "secret-a".to_string())
        })
        .unwrap();
        let store = setup.store;
        assert_eq!(store.authenticate(Some("secret-a")).unwrap().agent_id, "a");
        // sha256("hello")
        assert_eq!(store.authenticate(Some("hello")).unwrap().tenant, "t2");
        assert_eq!(store.authenticate(Some("nope")), Err(AuthError::UnknownKey));
        assert_eq!(store.authenticate(None), Err(AuthError::MissingKey));
        assert!(setup
            .warnings
            .iter()
            .any(|w| w.contains("WARDEN_ADMIN_KEY")));
    }

    #[test]
    fn unset_variables_are_reported_not_fatal_while_someone_can_log_in() {
        let setup = KeyStore::from_config(&config(TWO_AGENTS), |_| None).unwrap();
        assert!(setup.warnings.iter().any(|w| w.contains("$KEY_A")));
    }

    #[test]
    fn nobody_able_to_log_in_is_an_error_that_says_what_to_set() {
        let error = KeyStore::from_config(
            &config("agents:\n  - {id: dev, tenant: default, key_env: WARDEN_DEV_KEY}\n"),
            |_| None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(error.contains("WARDEN_DEV_KEY"), "{error}");
        assert!(error.contains("export"), "{error}");
    }

    #[test]
    fn open_mode_serves_keyless_requests_as_the_named_agent() {
        let store = KeyStore::from_config(
            &config("auth: {mode: open, open_agent: dev}\nagents:\n  - {id: dev, tenant: default, key_env: K}\n"),
            |_| None,
        )
        .unwrap()
        .store;
        assert_eq!(store.authenticate(None).unwrap().agent_id, "dev");
        assert_eq!(
            store.authenticate(Some("wrong")),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn admin_key_is_separate() {
        let store = KeyStore::from_config(&config(TWO_AGENTS), |name| match name {
            "KEY_A" => Some("a".into()),
            "WARDEN_ADMIN_KEY" => Some("root".into()),
            _ => None,
        })
        .unwrap()
        .store;
        assert!(store.is_admin(Some("root")));
        assert!(!store.is_admin(Some("a")));
        assert!(!store.is_admin(None));
    }

    #[test]
    fn shared_keys_are_refused() {
        let yaml =
            "agents:\n  - {id: a, tenant: t, key_env: K1}\n  - {id: b, tenant: t, key_env: K2}\n";
        let result = KeyStore::from_config(&config(yaml), |_| Some("same".into()));
        assert!(matches!(result, Err(KeySetupError::SharedKey { .. })));
    }
}
