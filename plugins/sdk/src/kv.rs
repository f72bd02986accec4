//! The entry's small persistent key-value store (private to one plugin
//! entry of one application; it survives agent restarts).
//!
//! Keys are 1 to 256 bytes, a value at most 64 KiB, an entry's keys and
//! values together at most 1 MiB.
//!
//! ```ignore
//! let last: Option<Baseline> = kv::get_json("baseline")?;
//! kv::set_json("baseline", &Baseline { p99_ms: 41.0 })?;
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The value under `key`, if any.
pub fn get(key: &str) -> Option<Vec<u8>> {
    store::get(key)
}

/// Stores `value` under `key`; the error names the key and the limit hit.
pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
    store::set(key, value).map_err(|e| format!("kv `{key}`: {e}"))
}

/// Removes `key` (no error if absent).
pub fn delete(key: &str) {
    store::delete(key)
}

/// The keys that start with `prefix`, sorted.
pub fn keys(prefix: &str) -> Vec<String> {
    store::keys(prefix)
}

/// The value under `key` decoded from JSON; `Ok(None)` if absent.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
    get(key)
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| format!("kv `{key}`: stored value is not the expected JSON: {e}"))
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("kv `{key}`: {e}"))?;
    set(key, &bytes)
}

#[cfg(target_arch = "wasm32")]
mod store {
    pub use crate::bindings::rollback::plugin::kv::{delete, get, keys};

    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        crate::bindings::rollback::plugin::kv::set(key, value)
    }
}

/// Native builds: an in-memory map per thread, so logic using the store can
/// be unit-tested (each test runs on its own thread).
#[cfg(not(target_arch = "wasm32"))]
mod store {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static MAP: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn get(key: &str) -> Option<Vec<u8>> {
        MAP.with(|m| m.borrow().get(key).cloned())
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        if key.is_empty() || key.len() > 256 {
            return Err("keys are 1 to 256 bytes".to_string());
        }
        if value.len() > 64 * 1024 {
            return Err("a value is at most 64 KiB".to_string());
        }
        MAP.with(|m| m.borrow_mut().insert(key.to_string(), value.to_vec()));
        Ok(())
    }

    pub fn delete(key: &str) {
        MAP.with(|m| m.borrow_mut().remove(key));
    }

    pub fn keys(prefix: &str) -> Vec<String> {
        MAP.with(|m| {
            m.borrow()
                .keys()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        assert_eq!(get_json::<u32>("n"), Ok(None));
        set_json("n", &7u32).expect("stored");
        set("other", b"x").expect("stored");
        assert_eq!(get_json::<u32>("n"), Ok(Some(7)));
        assert_eq!(keys("n"), vec!["n".to_string()]);
        let err = get_json::<u32>("other").expect_err("not JSON");
        assert!(err.starts_with("kv `other`: "), "{err}");
        delete("n");
        assert_eq!(get("n"), None);
        assert!(set("", b"x").is_err());
    }
}
