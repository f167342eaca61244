//! The key store as the configuration declares it: each agent's identity and key
//! source, under the `auth:` section. Composed here, so `auth` never reads the whole
//! configuration.

use super::Config;
use crate::auth::{AgentKey, KeySetup, KeySetupError, KeyStore, Principal};

impl KeyStore {
    /// The store for the agents and `auth:` section of `config`; `env` looks up
    /// environment variables.
    pub fn from_config(
        config: &Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KeySetup, KeySetupError> {
        let agents: Vec<AgentKey> = config
            .agents
            .iter()
            .map(|agent| AgentKey {
                principal: Principal {
                    agent_id: agent.id.clone(),
                    tenant: agent.tenant.clone(),
                    role: agent.role.clone(),
                    autonomy: agent.autonomy,
                },
                key: agent.key.clone(),
            })
            .collect();
        KeyStore::set_up(&config.auth, &agents, env)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::auth::{AuthError, KeySetupError};

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
