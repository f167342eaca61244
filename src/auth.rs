//! Bearer keys to principals. Keys are compared by their SHA-256 digest, so the
//! configuration, the process and its logs only ever hold digests.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::AutonomyMode;

/// How callers are told apart (`auth:`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The agent keyless requests act as in `open` mode.
    pub open_agent: Option<String>,
    /// Environment variable holding the admin key.
    pub admin_key_env: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every request needs an agent's key.
    #[default]
    Keys,
    /// Requests without a key act as `open_agent`. For a developer's own machine only.
    Open,
}

/// Where an agent's key is found; it never appears in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Lower-case hex SHA-256 of the key.
    Sha256(String),
    /// Name of the environment variable holding the key.
    Env(String),
}

/// An agent as the key store knows it: who it is, and where its key is.
#[derive(Debug, Clone)]
pub struct AgentKey {
    pub principal: Principal,
    pub key: KeySource,
}

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
    /// The store for `agents` under `auth`. `env` looks up environment variables (a
    /// closure so tests need not touch the process environment).
    pub fn set_up(
        auth: &AuthConfig,
        agents: &[AgentKey],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KeySetup, KeySetupError> {
        let lookup = |name: &str| env(name).filter(|value| !value.is_empty());
        let mut by_digest: HashMap<String, Arc<Principal>> = HashMap::new();
        let mut warnings = Vec::new();
        let mut unset = Vec::new();
        let mut principals = HashMap::new();
        for agent in agents {
            let principal = Arc::new(agent.principal.clone());
            let id = &principal.agent_id;
            principals.insert(id.clone(), principal.clone());
            let digest = match &agent.key {
                KeySource::Sha256(digest) => digest.clone(),
                KeySource::Env(name) => match lookup(name) {
                    Some(key) => digest(&key),
                    None => {
                        unset.push(format!(
                            "agent `{id}` reads its key from ${name}, which is not set"
                        ));
                        continue;
                    }
                },
            };
            if let Some(other) = by_digest.insert(digest, principal) {
                return Err(KeySetupError::SharedKey {
                    first: other.agent_id.clone(),
                    second: agent.principal.agent_id.clone(),
                });
            }
        }
        let open_agent = match (auth.mode, &auth.open_agent) {
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
        let admin_digest = lookup(&auth.admin_key_env).map(|key| digest(&key));
        if admin_digest.is_none() {
            warnings.push(format!(
                "${} is not set: the admin API refuses every request",
                auth.admin_key_env
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
    crate::audit::chain::digest(key.as_bytes())
}
