//! Typed configuration: a TOML file, overridden by `ZKMESH_<SERVICE>_<KEY>` environment
//! variables (nested keys joined by `__`), deserialised with unknown fields refused.
//!
//! The environment is passed in as a map so tests never touch the process environment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The process environment, as a map.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// Loads `T` from an optional TOML file and the `ZKMESH_<SECTION>_` variables in `env`.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    section: &str,
    env: &HashMap<String, String>,
) -> Result<T, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    let prefix = format!("ZKMESH_{}_", section.to_ascii_uppercase());
    // Sorted so that the result does not depend on the map's order.
    let overrides: BTreeMap<_, _> = env
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&prefix)
                .map(|key| (key.to_ascii_lowercase(), v))
        })
        .collect();
    for (key, value) in overrides {
        let path: Vec<&str> = key.split("__").collect();
        set_path(&mut table, &path, parse_value(value));
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Invalid(format!("{e}").trim().to_string()))
}

fn parse_value(raw: &str) -> toml::Value {
    // Numbers, booleans and arrays are written as TOML; anything else is a string.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry((*first).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// How long a service gives calls in flight to finish after shutdown begins, by default.
fn default_grace_secs() -> u64 {
    10
}

/// The `[server]` table every service shares: where it listens, its database, how long it
/// drains, and its TLS material (`[server.tls]`). Overridden like any key, e.g.
/// `ZKMESH_SCHEDULER_SERVER__LISTEN` or `ZKMESH_LEDGER_SERVER__TLS__CERT`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` to serve gRPC on; each service has its own default port.
    pub listen: Option<String>,
    /// `host:port` for plain-HTTP Prometheus metrics (`/metrics`); none when absent.
    pub metrics_listen: Option<String>,
    /// The service's database, e.g. `sqlite://mesh/registry.db`.
    pub database_url: String,
    /// Seconds calls in flight may take to finish after shutdown begins.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// The service's certificate, key and the mesh CA.
    pub tls: TlsFiles,
    /// Seconds the service trusts its copy of the registry's revocation list: past them
    /// without a refresh, it refuses every call that needs a certificate (UNAVAILABLE) rather
    /// than let a certificate revoked meanwhile in. The registry's own list is always current.
    #[serde(default = "default_max_revocation_age_secs")]
    pub max_revocation_age_secs: u64,
    /// `[server.limits]`: caps on connections, handshakes, streams, call time and headers.
    #[serde(default)]
    pub limits: crate::admission::Limits,
}

fn default_max_revocation_age_secs() -> u64 {
    30
}

impl ServerConfig {
    /// `max_revocation_age_secs` as a duration.
    pub fn max_revocation_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_revocation_age_secs)
    }

    /// `listen`, or the service's `default` address.
    pub fn listen_or(&self, default: &str) -> String {
        self.listen.clone().unwrap_or_else(|| default.to_string())
    }

    /// `grace_secs` as a duration.
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.grace_secs)
    }
}

/// Paths of a service's TLS material.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The mesh CA certificate (PEM).
    pub ca: PathBuf,
    /// This process's certificate (PEM).
    pub cert: PathBuf,
    /// This process's private key (PEM).
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        listen: String,
        #[serde(default)]
        slots: u32,
        tls: Option<TlsFiles>,
    }

    #[test]
    fn env_overrides_file_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"a\"\nslots = 1\n").unwrap();
        let mut env = HashMap::new();
        env.insert("ZKMESH_TEST_SLOTS".to_string(), "4".to_string());
        env.insert("ZKMESH_TEST_TLS__CA".to_string(), "/ca".to_string());
        env.insert("ZKMESH_TEST_TLS__CERT".to_string(), "/c".to_string());
        env.insert("ZKMESH_TEST_TLS__KEY".to_string(), "/k".to_string());
        env.insert("ZKMESH_OTHER_X".to_string(), "ignored".to_string());
        let c: Sample = load(Some(&file), "test", &env).unwrap();
        assert_eq!(c.listen, "a");
        assert_eq!(c.slots, 4);
        assert_eq!(c.tls.unwrap().ca, PathBuf::from("/ca"));
        env.insert("ZKMESH_TEST_BOGUS".to_string(), "1".to_string());
        let err = load::<Sample>(Some(&file), "test", &env).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
