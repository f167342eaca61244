//! Compiled JSON schemas of the tools requests declare, shared across requests and
//! bounded in memory.
//!
//! An agent sends the same tool list with every request, and compiling a schema costs
//! several times more than checking arguments against it; each request's schemas are
//! used up to three times (request validation, the routing check of a local tool call,
//! the policy decision). So request validation compiles each declared schema once per
//! process ([`admit`]) and later steps find it by a structural hash, confirmed by
//! comparing the schema itself ([`compiled`]).
//!
//! The cache holds what agents send, so what it may hold is bounded twice: in all, by
//! an estimate of the memory its schemas take, and per agent, by a quarter of that, so
//! one agent inventing a schema per request evicts its own schemas, not everyone's.
//! Least recently used entries go first. No cache crate bounds weight per owner, hence
//! this small one of our own.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use jsonschema::Validator;
use serde_json::Value;

/// The cache's budget until `set_budget` is called: the configuration's default.
const DEFAULT_BUDGET_BYTES: usize = 64 << 20;
/// Memory taken to hold a schema, per byte of its JSON text: its parsed value and the
/// validator compiled from it. Measured on large schemas (many properties, patterns and
/// nested objects): about six times the text; eight leaves room.
const BYTES_PER_SCHEMA_BYTE: usize = 8;
/// The share of the budget one agent's schemas may take.
const AGENT_SHARE: usize = 4;

struct Compiled {
    schema: Value,
    validator: Arc<Validator>,
}

struct Slot {
    compiled: Arc<Compiled>,
    owner: Arc<str>,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    slots: HashMap<u64, Slot>,
    by_owner: HashMap<Arc<str>, usize>,
    total: usize,
    clock: u64,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);
static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET_BYTES);

/// Sets the memory the cache may take (`server.schema_cache_mib`), for schemas cached
/// from now on.
pub fn set_budget(bytes: usize) {
    BUDGET.store(bytes, Ordering::Relaxed);
}

fn cache() -> MutexGuard<'static, Cache> {
    match CACHE.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Compiles a schema a request of `owner` declares, keeping it for later requests and
/// later steps of this one. The error says why the schema is unusable.
pub fn admit(owner: &str, schema: &Value) -> Result<Arc<Validator>, String> {
    let key = structural_hash(schema);
    if let Some(validator) = cached(key, schema) {
        return Ok(validator);
    }
    let validator = compile(schema)?;
    let bytes = text_length(schema).saturating_mul(BYTES_PER_SCHEMA_BYTE);
    let budget = BUDGET.load(Ordering::Relaxed);
    if bytes <= budget / AGENT_SHARE {
        cache().insert(key, owner, bytes, budget, schema, &validator);
    }
    Ok(validator)
}

/// The validator for `schema`: the cached one, or compiled now (and not kept: only
/// `admit` decides what the cache holds, charged to the agent that sent it).
pub fn compiled(schema: &Value) -> Result<Arc<Validator>, String> {
    match cached(structural_hash(schema), schema) {
        Some(validator) => Ok(validator),
        None => compile(schema),
    }
}

fn compile(schema: &Value) -> Result<Arc<Validator>, String> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn cached(key: u64, schema: &Value) -> Option<Arc<Validator>> {
    let compiled = {
        let mut cache = cache();
        cache.clock += 1;
        let now = cache.clock;
        let slot = cache.slots.get_mut(&key)?;
        slot.last_used = now;
        slot.compiled.clone()
    };
    // Compared outside the lock: a large schema takes a while, and a collision is rare.
    (compiled.schema == *schema).then(|| compiled.validator.clone())
}

impl Cache {
    fn insert(
        &mut self,
        key: u64,
        owner: &str,
        bytes: usize,
        budget: usize,
        schema: &Value,
        validator: &Arc<Validator>,
    ) {
        // On a hash collision the newer schema takes the slot; both stay correct, the
        // older one just compiles again next time.
        self.remove(key);
        let owner: Arc<str> = self
            .by_owner
            .get_key_value(owner)
            .map_or_else(|| owner.into(), |(known, _)| known.clone());
        while self.by_owner.get(&owner).copied().unwrap_or(0) + bytes > budget / AGENT_SHARE {
            if !self.evict_least_recent(Some(&owner)) {
                break;
            }
        }
        while self.total + bytes > budget {
            if !self.evict_least_recent(None) {
                break;
            }
        }
        self.clock += 1;
        *self.by_owner.entry(owner.clone()).or_default() += bytes;
        self.total += bytes;
        self.slots.insert(
            key,
            Slot {
                compiled: Arc::new(Compiled {
                    schema: schema.clone(),
                    validator: validator.clone(),
                }),
                owner,
                bytes,
                last_used: self.clock,
            },
        );
    }

    /// Evicts the least recently used entry (of `owner`, if given); `false` if none.
    /// A scan: evictions happen only beside a compilation, which costs far more.
    fn evict_least_recent(&mut self, owner: Option<&Arc<str>>) -> bool {
        let oldest = self
            .slots
            .iter()
            .filter(|(_, slot)| owner.is_none_or(|owner| slot.owner == *owner))
            .min_by_key(|(_, slot)| slot.last_used)
            .map(|(key, _)| *key);
        match oldest {
            Some(key) => {
                self.remove(key);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(slot) = self.slots.remove(&key) {
            self.total -= slot.bytes;
            if let Some(held) = self.by_owner.get_mut(&slot.owner) {
                *held -= slot.bytes;
                if *held == 0 {
                    self.by_owner.remove(&slot.owner);
                }
            }
        }
    }
}

/// The length of the value's JSON text, counted without writing it.
fn text_length(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Hashes the value's structure without serialising it. Numbers hash by their f64
/// value, so `1` and `1.0` collide; the equality check after lookup tells them apart.
fn structural_hash(value: &Value) -> u64 {
    fn feed(value: &Value, hasher: &mut DefaultHasher) {
        match value {
            Value::Null => 0u8.hash(hasher),
            Value::Bool(b) => (1u8, b).hash(hasher),
            Value::Number(n) => (2u8, n.as_f64().map(f64::to_bits)).hash(hasher),
            Value::String(s) => (3u8, s).hash(hasher),
            Value::Array(items) => {
                (4u8, items.len()).hash(hasher);
                items.iter().for_each(|item| feed(item, hasher));
            }
            Value::Object(map) => {
                (5u8, map.len()).hash(hasher);
                for (key, item) in map {
                    key.hash(hasher);
                    feed(item, hasher);
                }
            }
        }
    }
    let mut hasher = DefaultHasher::new();
    feed(value, &mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_same_schema_is_compiled_once() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let first = admit("a", &schema).unwrap();
        let again = compiled(&schema.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(first.is_valid(&json!({"city": "Paris"})));
        assert!(!first.is_valid(&json!({"city": 3})));
    }

    #[test]
    fn schemas_that_hash_alike_are_not_mistaken_for_each_other() {
        // 1 and 1.0 hash the same but are different values: the second schema must not
        // be handed the first one's validator.
        let integer = json!({"type": "object", "minimum": 1});
        let float = json!({"type": "object", "minimum": 1.0});
        assert_eq!(structural_hash(&integer), structural_hash(&float));
        assert_ne!(integer, float);
        let first = admit("a", &integer).unwrap();
        let second = compiled(&float).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&compiled(&integer).unwrap(), &second));
    }

    #[test]
    fn an_unusable_schema_is_an_error_not_a_cache_entry() {
        let broken = json!({"type": "object", "properties": {"n": {"type": "no-such-type"}}});
        assert!(admit("a", &broken).is_err());
        assert!(compiled(&broken).is_err());
    }

    fn schema_of(owner: &str, n: usize) -> Value {
        json!({"type": "object", "properties": {format!("{owner}_{n}"): {"type": "string"}}})
    }

    #[test]
    fn an_agent_that_fills_its_share_evicts_its_own_schemas_first() {
        let mut cache = Cache::default();
        let validator = compile(&json!({})).unwrap();
        let budget = 4_000;
        // `b` holds a little; `a` then inserts far more than its quarter.
        cache.insert(1, "b", 100, budget, &schema_of("b", 0), &validator);
        for n in 0..50u64 {
            cache.insert(100 + n, "a", 100, budget, &schema_of("a", 0), &validator);
            assert!(cache.by_owner.get("a").copied().unwrap_or(0) <= budget / AGENT_SHARE);
        }
        assert!(cache.slots.contains_key(&1), "b's schema was evicted by a");
        assert_eq!(cache.by_owner.get("b"), Some(&100));
        // The most recent of `a`'s stayed, the oldest went.
        assert!(cache.slots.contains_key(&149) && !cache.slots.contains_key(&100));
        assert_eq!(
            cache.total,
            cache.slots.values().map(|slot| slot.bytes).sum::<usize>()
        );

        // Many agents together stay within the whole budget.
        for agent in 0..20u64 {
            let owner = format!("agent-{agent}");
            for n in 0..10u64 {
                cache.insert(
                    1_000 * (agent + 1) + n,
                    &owner,
                    100,
                    budget,
                    &json!({}),
                    &validator,
                );
            }
        }
        assert!(cache.total <= budget);
    }

    #[test]
    fn a_schema_used_again_is_kept_over_older_ones() {
        let mut cache = Cache::default();
        let validator = compile(&json!({})).unwrap();
        let budget = 4 * 300;
        for key in 0..3u64 {
            cache.insert(
                key,
                "a",
                100,
                budget,
                &schema_of("a", key as usize),
                &validator,
            );
        }
        cache.clock += 1;
        let now = cache.clock;
        if let Some(slot) = cache.slots.get_mut(&0) {
            slot.last_used = now;
        }
        cache.insert(3, "a", 100, budget, &schema_of("a", 3), &validator);
        assert!(cache.slots.contains_key(&0) && !cache.slots.contains_key(&1));
    }
}
