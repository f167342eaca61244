//! Compiled JSON schemas of the tools requests declare, shared across requests.
//!
//! An agent sends the same tool list with every request, and compiling a schema costs
//! several times more than checking arguments against it; each request's schemas are
//! used up to three times (request validation, the routing check of a local tool call,
//! the policy decision). So a schema is compiled once per process and looked up by a
//! structural hash, confirmed by comparing the schema itself.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use jsonschema::Validator;
use serde_json::Value;

/// Distinct schemas kept. Past this the cache starts over: a client that invents a new
/// schema per request costs compilations, never unbounded memory.
const CAPACITY: usize = 4096;

struct Compiled {
    schema: Value,
    validator: Arc<Validator>,
}

static CACHE: LazyLock<DashMap<u64, Compiled>> = LazyLock::new(DashMap::new);

/// The validator for `schema`, compiled on first sight. The error says why the schema
/// is unusable.
pub fn compiled(schema: &Value) -> Result<Arc<Validator>, String> {
    let key = structural_hash(schema);
    if let Some(entry) = CACHE.get(&key) {
        if entry.schema == *schema {
            return Ok(Arc::clone(&entry.validator));
        }
    }
    let validator = Arc::new(jsonschema::validator_for(schema).map_err(|e| e.to_string())?);
    if CACHE.len() >= CAPACITY {
        CACHE.clear();
    }
    // On a hash collision the newer schema takes the slot; both stay correct, the
    // older one just compiles again next time.
    CACHE.insert(
        key,
        Compiled {
            schema: schema.clone(),
            validator: Arc::clone(&validator),
        },
    );
    Ok(validator)
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
        let first = compiled(&schema).unwrap();
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
        let first = compiled(&integer).unwrap();
        let second = compiled(&float).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(&compiled(&integer).unwrap(), &second));
    }

    #[test]
    fn an_unusable_schema_is_an_error_not_a_cache_entry() {
        let broken = json!({"type": "object", "properties": {"n": {"type": "no-such-type"}}});
        assert!(compiled(&broken).is_err());
        assert!(compiled(&broken).is_err());
    }
}
