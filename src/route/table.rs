//! The routing table: providers, thresholds and prices as one versioned snapshot.
//! A request takes the snapshot current when it starts and keeps it to the end, so a
//! reload never changes the rules under a request in flight.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;

use super::config::{validate_routing, RawRouting, RoutingConfig};
use crate::backend::provider::config::{ModelKind, ProviderConfig};
use crate::backend::provider::Provider;
use crate::cost::{Metered, PriceTable};

/// One place a request may be sent: a provider and the model name it serves.
#[derive(Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
}

impl std::fmt::Debug for Target {
    /// The provider by name: its client and breaker say nothing about where a request goes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("provider", &self.provider.config().name)
            .field("model", &self.model)
            .finish()
    }
}

pub struct RoutingTable {
    /// Increases by one with every change, from 1.
    pub version: u64,
    pub routing: RoutingConfig,
    pub providers: Vec<Arc<Provider>>,
    pub prices: PriceTable,
    /// Agents the routing may name in per-agent overrides.
    agents: Vec<String>,
    /// The governor's, fixed at start: the local queue fallback must come before it.
    queue_timeout: Duration,
}

/// What a table is built from: the parts of the configuration it holds.
pub struct TableSource<'a> {
    pub providers: &'a [ProviderConfig],
    pub routing: &'a RoutingConfig,
    pub prices: &'a PriceTable,
    /// Agents the routing may name in per-agent overrides.
    pub agents: Vec<String>,
    /// The governor's, which the local queue fallback must come before.
    pub queue_timeout: Duration,
}

/// What the admin API shows of a table.
#[derive(Debug, Serialize)]
pub struct TableView<'a> {
    pub version: u64,
    pub routing: &'a RoutingConfig,
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub name: String,
    pub models: Vec<String>,
    pub circuit: crate::backend::provider::breaker::BreakerState,
}

impl RoutingTable {
    /// Builds providers from `source`. Providers whose configuration is unchanged from
    /// `previous` are kept as they are, circuit state and all.
    pub fn build(
        source: &TableSource,
        version: u64,
        previous: Option<&RoutingTable>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let providers = source
            .providers
            .iter()
            .map(|provider_config| {
                let kept = previous
                    .and_then(|table| table.providers.iter().find(|p| p.config() == provider_config))
                    .cloned();
                match kept {
                    Some(provider) => Ok(provider),
                    None => {
                        let key = provider_config.api_key_env.as_deref().and_then(|name| {
                            let key = env(name).filter(|key| !key.is_empty());
                            if key.is_none() {
                                tracing::warn!(provider = %provider_config.name, "${name} is not set: calls go out without a key");
                            }
                            key
                        });
                        Provider::new(provider_config.clone(), key).map(Arc::new).map_err(|e| e.to_string())
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            version,
            routing: source.routing.clone(),
            providers,
            prices: source.prices.clone(),
            agents: source.agents.clone(),
            // The governor reads its settings at start only; a reload keeps them.
            queue_timeout: previous.map_or(source.queue_timeout, |table| table.queue_timeout),
        })
    }

    /// Providers serving `model`, in configuration order.
    pub fn targets_for(&self, model: &str) -> Vec<Target> {
        self.providers
            .iter()
            .filter(|provider| provider.serves(model))
            .map(|provider| Target {
                provider: provider.clone(),
                model: model.to_string(),
            })
            .collect()
    }

    /// Every provider that serves `model` as an embedding model, in configured order.
    pub fn embedding_targets(&self, model: &str) -> Vec<Target> {
        self.providers
            .iter()
            .filter(|provider| provider.config().serves_as(model, ModelKind::Embedding))
            .map(|provider| Target {
                provider: provider.clone(),
                model: model.to_string(),
            })
            .collect()
    }

    /// The fallback chain for escalations: each escalation model in order, each on
    /// every provider that serves it.
    pub fn escalation_chain(&self) -> Vec<Target> {
        self.routing
            .escalation_models
            .iter()
            .flat_map(|model| self.targets_for(model))
            .collect()
    }

    /// What this request's tokens would have cost at the escalation model: the prices'
    /// `escalation_model`, or else the first escalation target at its provider's price.
    pub fn reference_cost(&self, metered: &Metered) -> Option<Decimal> {
        let first = self.escalation_chain().into_iter().next();
        let fallback = first.as_ref().map(|target| {
            (
                target.provider.config().name.as_str(),
                target.model.as_str(),
            )
        });
        self.prices.reference_cost(metered, fallback)
    }

    /// Every external model name, once, in configuration order.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = Vec::new();
        for provider in &self.providers {
            for model in &provider.config().models {
                if !models.contains(&model.name) {
                    models.push(model.name.clone());
                }
            }
        }
        models
    }

    pub fn view(&self) -> TableView<'_> {
        TableView {
            version: self.version,
            routing: &self.routing,
            providers: self
                .providers
                .iter()
                .map(|provider| ProviderView {
                    name: provider.config().name.clone(),
                    models: provider
                        .config()
                        .models
                        .iter()
                        .map(|m| m.name.clone())
                        .collect(),
                    circuit: provider.breaker_state(),
                })
                .collect(),
        }
    }
}

/// The current table, replaced whole by reloads.
pub struct RoutingState {
    current: RwLock<Arc<RoutingTable>>,
}

impl RoutingState {
    pub fn new(table: RoutingTable) -> Self {
        Self {
            current: RwLock::new(Arc::new(table)),
        }
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        match self.current.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// New thresholds and chain over the same providers (`PUT /admin/routing`).
    pub fn update_routing(&self, raw: RawRouting) -> Result<Arc<RoutingTable>, (String, String)> {
        self.swap(|current| {
            let provider_configs: Vec<_> = current
                .providers
                .iter()
                .map(|p| p.config().clone())
                .collect();
            let routing = validate_routing(
                raw,
                &provider_configs,
                &current.agents,
                current.queue_timeout,
                "",
            )?;
            Ok(RoutingTable {
                version: current.version + 1,
                routing,
                providers: current.providers.clone(),
                prices: current.prices.clone(),
                agents: current.agents.clone(),
                queue_timeout: current.queue_timeout,
            })
        })
    }

    /// A reloaded configuration file (SIGHUP): providers, routing and prices.
    pub fn reload(
        &self,
        source: &TableSource,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Arc<RoutingTable>, (String, String)> {
        self.swap(|current| {
            RoutingTable::build(source, current.version + 1, Some(current), env)
                .map_err(|message| ("providers".to_string(), message))
        })
    }

    fn swap(
        &self,
        next: impl FnOnce(&RoutingTable) -> Result<RoutingTable, (String, String)>,
    ) -> Result<Arc<RoutingTable>, (String, String)> {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let table = Arc::new(next(&guard)?);
        *guard = table.clone();
        tracing::info!(version = table.version, "routing table replaced");
        Ok(table)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::chat::Usage;
    use crate::config::Config;

    /// A table of one provider, `acme`, serving `big` (priced) and `free`, under the
    /// `routing` section given, from a file in a folder without a prices file.
    pub(in crate::route) fn table(routing: &str) -> RoutingTable {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "providers:\n  - {{name: acme, kind: openai, base_url: \"http://127.0.0.1:9/v1\", \
             models: [{{name: big, input_per_million: 5, output_per_million: 15}}, {{name: free}}]}}\n\
             routing:\n{routing}"
        );
        let config = Config::from_yaml(&text, &dir.path().join("warden.yaml")).unwrap();
        RoutingTable::build(&config.table_source(), 1, None, &|_| None).unwrap()
    }

    #[test]
    fn the_reference_defaults_to_the_first_escalation_model_at_its_provider_price() {
        let usage = Usage {
            prompt_tokens: 2_000,
            completion_tokens: 100,
            cached_prompt_tokens: 0,
        };
        let metered = Metered::tokens("local", "small", usage);
        // 2000 * 5/1M + 100 * 15/1M
        let expected = Some(Decimal::new(115, 4));
        assert_eq!(
            table("  escalation_models: [big, free]\n").reference_cost(&metered),
            expected
        );
        assert_eq!(
            table("  escalation_models: [free, big]\n").reference_cost(&metered),
            None
        );
        assert_eq!(table("  {}\n").reference_cost(&metered), None);
    }
}
