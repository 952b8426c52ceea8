//! Circuit keys: the verifier runs the Groth16 setup of each size class itself (so no prover
//! ever knows the setup randomness), stores the keys content-addressed in its keys directory,
//! and serves them: verifying keys to anyone, proving keys to nodes.
//!
//! Layout of the keys directory: `<sha256>.pk` and `<sha256>.vk` hold the keys; `<class>.json`
//! names them, with the figures of the setup. A class whose files exist and hash right is
//! loaded, never set up again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use zkmesh_proto::{CircuitInfo, CircuitSetupState};
use zkmesh_prover::circuit::Class;
use zkmesh_prover::groth::{self, Pvk};
use zkmesh_prover::zkvm::{self, CLASSES, class_named, sha256_hex};

/// What `<class>.json` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    class: String,
    proving_key_sha256: String,
    proving_key_size: u64,
    verifying_key_sha256: String,
    constraints: u64,
    setup_ms: u64,
    /// The circuit's fingerprint (shape and capacities) when the keys were made
    /// ([`groth::fingerprint`]): a cheap check at every start.
    #[serde(default)]
    circuit_fingerprint: String,
    /// The hash of the whole constraint system the keys were made for
    /// ([`groth::constraint_system_hash`]), from the setup's own synthesis: checked when the
    /// class is first used.
    #[serde(default)]
    constraint_system_sha256: String,
}

pub struct Ready {
    pub info: CircuitInfo,
    pub pvk: Pvk,
    pub vk_bytes: Vec<u8>,
    pub pk_path: PathBuf,
    /// The constraint system the keys were made for.
    constraint_system: String,
    /// Whether today's constraint system of the class is that one: decided once, at first
    /// use (at once for keys set up by this process).
    checked: std::sync::OnceLock<Result<(), String>>,
}

enum State {
    NotSetUp,
    SettingUp { phase: &'static str, since: Instant },
    Ready(Arc<Ready>),
    Failed(String),
}

pub struct Circuits {
    dir: PathBuf,
    states: Mutex<HashMap<&'static str, State>>,
}

fn info_of(class: &Class) -> CircuitInfo {
    CircuitInfo {
        circuit_class: class.name.to_string(),
        steps: class.steps as u64,
        program: class.program as u64,
        data_words: class.data as u64,
        input_words: class.input as u64,
        output_words: class.output as u64,
        state: CircuitSetupState::NotSetUp as i32,
        ..Default::default()
    }
}

impl Circuits {
    /// Loads every class whose keys are already in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Circuits>> {
        std::fs::create_dir_all(dir)?;
        let circuits = Arc::new(Circuits {
            dir: dir.to_path_buf(),
            states: Mutex::new(CLASSES.iter().map(|c| (c.name, State::NotSetUp)).collect()),
        });
        for class in CLASSES {
            match circuits.load(&class) {
                Ok(Some(ready)) => {
                    tracing::info!(class = class.name, pk = %ready.info.proving_key_sha256, "circuit keys loaded");
                    circuits.set(class.name, State::Ready(Arc::new(ready)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(class = class.name, error = %e, "stored circuit keys unusable; the class must be set up again");
                }
            }
        }
        Ok(circuits)
    }

    fn set(&self, name: &'static str, state: State) {
        self.states.lock().unwrap().insert(name, state);
    }

    fn load(&self, class: &Class) -> anyhow::Result<Option<Ready>> {
        let manifest = self.dir.join(format!("{}.json", class.name));
        if !manifest.exists() {
            return Ok(None);
        }
        let m: Manifest = serde_json::from_slice(&std::fs::read(&manifest)?)?;
        if m.circuit_fingerprint != groth::fingerprint(class)
            || m.constraint_system_sha256.is_empty()
        {
            tracing::warn!(
                class = class.name,
                "stored keys were made for another version of the circuit; setting the class up again"
            );
            return Ok(None);
        }
        let vk_bytes = std::fs::read(self.dir.join(format!("{}.vk", m.verifying_key_sha256)))?;
        anyhow::ensure!(
            sha256_hex(&vk_bytes) == m.verifying_key_sha256,
            "verifying key does not match its hash"
        );
        let pk_path = self.dir.join(format!("{}.pk", m.proving_key_sha256));
        let pk_bytes = std::fs::read(&pk_path)?;
        anyhow::ensure!(
            sha256_hex(&pk_bytes) == m.proving_key_sha256,
            "proving key does not match its hash"
        );
        let vk = zkvm::vk_from(&vk_bytes)?;
        Ok(Some(Ready {
            info: CircuitInfo {
                state: CircuitSetupState::Ready as i32,
                proving_key_sha256: m.proving_key_sha256,
                proving_key_size: m.proving_key_size,
                verifying_key_sha256: m.verifying_key_sha256,
                constraints: m.constraints,
                setup_ms: m.setup_ms,
                ..info_of(class)
            },
            pvk: groth::prepare(&vk),
            vk_bytes,
            pk_path,
            constraint_system: m.constraint_system_sha256,
            checked: Default::default(),
        }))
    }

    pub fn list(&self) -> Vec<CircuitInfo> {
        let states = self.states.lock().unwrap();
        CLASSES
            .iter()
            .map(|c| match states.get(c.name) {
                Some(State::Ready(r)) => r.info.clone(),
                Some(State::SettingUp { phase, since }) => CircuitInfo {
                    state: CircuitSetupState::SettingUp as i32,
                    state_detail: format!("{phase}, {} s", since.elapsed().as_secs()),
                    ..info_of(c)
                },
                Some(State::Failed(e)) => CircuitInfo {
                    state: CircuitSetupState::Failed as i32,
                    state_detail: e.clone(),
                    ..info_of(c)
                },
                _ => info_of(c),
            })
            .collect()
    }

    pub fn ready(&self, name: &str) -> Option<Arc<Ready>> {
        match self.states.lock().unwrap().get(name) {
            Some(State::Ready(r)) => Some(r.clone()),
            _ => None,
        }
    }

    /// The keys of a ready class, once the class's constraint system today has been found to
    /// be the one its keys were made for (the first call for a class synthesises it: seconds
    /// for c14; run it on the blocking pool). Keys made for another system are dropped (their
    /// manifest removed) and the class must be set up again.
    pub fn checked(&self, name: &str) -> Result<Arc<Ready>, String> {
        let ready = self
            .ready(name)
            .ok_or_else(|| format!("is {}", self.state(name)))?;
        let class = class_named(name).expect("ready classes are known");
        let verdict = ready.checked.get_or_init(|| {
            let started = Instant::now();
            let today = groth::constraint_system_hash(&class).map_err(|e| e.to_string())?;
            tracing::info!(class = name, ms = started.elapsed().as_millis() as u64, "constraint system of stored keys checked");
            if today == ready.constraint_system {
                Ok(())
            } else {
                Err(format!(
                    "has keys made for another constraint system ({}, today {today}); set it up again",
                    ready.constraint_system
                ))
            }
        });
        if let Err(e) = verdict {
            tracing::error!(class = name, error = %e, "stored circuit keys refused");
            let _ = std::fs::remove_file(self.dir.join(format!("{}.json", class.name)));
            self.set(class.name, State::Failed(e.clone()));
            return Err(e.clone());
        }
        Ok(ready)
    }

    /// True when some class is ready or on its way.
    pub fn any_available(&self) -> bool {
        self.states
            .lock()
            .unwrap()
            .values()
            .any(|s| matches!(s, State::Ready(_) | State::SettingUp { .. }))
    }

    /// The state line of a class.
    pub fn state(&self, name: &str) -> String {
        self.list()
            .into_iter()
            .find(|c| c.circuit_class == name)
            .map(|c| c.state_line())
            .unwrap_or_else(|| "unknown class".into())
    }

    /// Sets up `name` unless it is ready or already being set up; blocks (run it on the
    /// blocking pool). Progress is visible through [`Circuits::list`].
    pub fn setup(&self, name: &str) -> Result<Arc<Ready>, String> {
        let class = class_named(name).ok_or_else(|| {
            format!(
                "unknown circuit class {name:?}; the classes are {}",
                CLASSES
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        {
            let mut states = self.states.lock().unwrap();
            match states.get(class.name) {
                Some(State::Ready(r)) => return Ok(r.clone()),
                Some(State::SettingUp { .. }) => {
                    return Err(format!("class {name} is already being set up"));
                }
                _ => {}
            }
            states.insert(
                class.name,
                State::SettingUp {
                    phase: "generating keys",
                    since: Instant::now(),
                },
            );
        }
        let result = self.run_setup(&class);
        match &result {
            Ok(r) => {
                tracing::info!(
                    class = name,
                    ms = r.info.setup_ms,
                    constraints = r.info.constraints,
                    "circuit setup done"
                );
                self.set(class.name, State::Ready(r.clone()));
            }
            Err(e) => {
                tracing::error!(class = name, error = %e, "circuit setup failed");
                self.set(class.name, State::Failed(e.clone()));
            }
        }
        result
    }

    fn phase(&self, class: &Class, phase: &'static str) {
        if let Some(State::SettingUp { phase: p, .. }) =
            self.states.lock().unwrap().get_mut(class.name)
        {
            *p = phase;
        }
        tracing::info!(class = class.name, phase, "circuit setup");
    }

    fn run_setup(&self, class: &Class) -> Result<Arc<Ready>, String> {
        let started = Instant::now();
        self.phase(class, "counting constraints");
        let constraints = groth::count_constraints(*class).map_err(|e| e.to_string())?;
        self.phase(class, "generating keys");
        let (pk, vk, constraint_system) = groth::setup(*class).map_err(|e| e.to_string())?;
        self.phase(class, "writing keys");
        let pk_bytes = zkvm::pk_bytes(&pk);
        drop(pk);
        let vk_bytes = zkvm::vk_bytes(&vk);
        let (pk_hash, vk_hash) = (sha256_hex(&pk_bytes), sha256_hex(&vk_bytes));
        let write = |path: PathBuf, bytes: &[u8]| -> Result<(), String> {
            // Unique, so that two verifiers sharing a keys directory never write one file.
            let tmp = path.with_extension(format!("{}.tmp", zkmesh_kit::random_id("")));
            std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let pk_path = self.dir.join(format!("{pk_hash}.pk"));
        write(pk_path.clone(), &pk_bytes)?;
        write(self.dir.join(format!("{vk_hash}.vk")), &vk_bytes)?;
        let manifest = Manifest {
            class: class.name.to_string(),
            proving_key_sha256: pk_hash.clone(),
            proving_key_size: pk_bytes.len() as u64,
            verifying_key_sha256: vk_hash.clone(),
            constraints,
            setup_ms: started.elapsed().as_millis() as u64,
            circuit_fingerprint: groth::fingerprint(class),
            constraint_system_sha256: constraint_system.clone(),
        };
        // The manifest goes last: a crash before it leaves no half-set-up class behind.
        write(
            self.dir.join(format!("{}.json", class.name)),
            &serde_json::to_vec_pretty(&manifest).expect("json"),
        )?;
        Ok(Arc::new(Ready {
            info: CircuitInfo {
                state: CircuitSetupState::Ready as i32,
                proving_key_sha256: pk_hash,
                proving_key_size: manifest.proving_key_size,
                verifying_key_sha256: vk_hash,
                constraints,
                setup_ms: manifest.setup_ms,
                ..info_of(class)
            },
            pvk: groth::prepare(&vk),
            vk_bytes,
            pk_path,
            constraint_system,
            checked: Ok(()).into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys stored for another constraint system than today's (an older circuit whose shape
    /// fingerprint happened to match, or a manifest edited by hand) are refused at first use:
    /// the class fails with the reason and its manifest is removed, so the next start sets it
    /// up again. Keys stored for today's system are accepted.
    #[test]
    fn stored_keys_for_another_constraint_system_are_refused_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let made = Circuits::open(dir.path()).unwrap();
        made.setup("c9").unwrap();
        assert!(made.checked("c9").is_ok(), "keys this process set up");

        // Stored keys, today's system: loaded, then checked once.
        let reopened = Circuits::open(dir.path()).unwrap();
        assert!(reopened.ready("c9").is_some());
        assert!(reopened.checked("c9").is_ok());

        // The same keys, named for another system.
        let path = dir.path().join("c9.json");
        let mut m: Manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let other = format!("{:0>64}", "1");
        assert_ne!(m.constraint_system_sha256, other);
        m.constraint_system_sha256 = other;
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let stale = Circuits::open(dir.path()).unwrap();
        assert!(
            stale.ready("c9").is_some(),
            "the cheap check at start passes"
        );
        let err = match stale.checked("c9") {
            Ok(_) => panic!("keys for another constraint system were used"),
            Err(e) => e,
        };
        assert!(err.contains("another constraint system"), "{err}");
        assert!(stale.ready("c9").is_none());
        assert!(
            stale.state("c9").starts_with("failed"),
            "{}",
            stale.state("c9")
        );
        assert!(!path.exists(), "the manifest of refused keys is removed");
        // And a manifest with no constraint-system hash at all is not loaded.
        m.constraint_system_sha256 = String::new();
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(Circuits::open(dir.path()).unwrap().ready("c9").is_none());
    }
}
