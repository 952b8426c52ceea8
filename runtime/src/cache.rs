//! The on-disk cache of compiled modules.
//!
//! A compiled module is native code: loading one is `Module::deserialize`, which trusts its bytes
//! completely. So a worker only ever loads an artifact that it compiled itself, and proves that to
//! itself with a MAC:
//!
//! - The cache directory holds a 32-byte secret, `cache.key` (mode 0600), made on first use.
//! - An artifact lives at `{module sha256}-{engine compatibility hash}.cwasm`: a module compiled
//!   by another wasmtime version or configuration is never even looked up.
//! - The file is `MAGIC`, then HMAC-SHA256(key, module sha256 ‖ compatibility hash ‖ artifact),
//!   then the artifact. A file whose tag does not match (edited, truncated, copied from another
//!   worker, or written by anyone without the key) is deleted and the module recompiled.
//!
//! - The directory is held to a byte budget: after each store, the least recently used `.cwasm`
//!   files (by modification time, which a load refreshes) are deleted until the rest fit, and an
//!   artifact larger than the whole budget is not stored at all. Artifacts of other engines
//!   (an older wasmtime) count too, and so go first.
//!
//! Anyone who can read `cache.key` can forge artifacts; that is someone who already has the
//! worker's own account, which is the trust boundary of any on-disk cache.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"zkmc\x01\0\0\0";
const TAG_LEN: usize = 32;

/// Why a cached artifact was not used.
#[derive(Debug)]
pub(crate) enum Miss {
    /// No file: compile.
    Absent,
    /// A file that failed its check: deleted (and logged); compile.
    Rejected,
}

pub(crate) struct DiskCache {
    dir: PathBuf,
    pub(crate) key: [u8; 32],
    /// Hex of the engine's compatibility hash, part of every file name and tag.
    engine: String,
    /// The most bytes of `.cwasm` files the directory may hold.
    max_bytes: u64,
}

impl DiskCache {
    /// Opens (creating if needed) the cache in `dir` for an engine with `engine_hash`.
    pub(crate) fn open(
        dir: &Path,
        engine_hash: [u8; 32],
        max_bytes: u64,
    ) -> std::io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        let key_path = dir.join("cache.key");
        let key = match fs::read(&key_path) {
            Ok(bytes) if bytes.len() == 32 => bytes.try_into().expect("32 bytes"),
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a 32-byte cache key; delete it to start a new cache",
                    key_path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                // Written in full under a name of its own, then linked into place: no reader
                // (another sandbox on the same directory, or this one after a crash) ever sees
                // a partial key, and of two racing sandboxes exactly one key wins.
                let tmp = dir.join(format!("cache.key.{}.tmp", random_hex()));
                write_private(&tmp, &key)?;
                let linked = fs::hard_link(&tmp, &key_path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => key,
                    // Another sandbox made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fs::read(&key_path)?
                        .try_into()
                        .map_err(|_| std::io::Error::other("cache.key is not 32 bytes"))?,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            key,
            engine: hex::encode(&engine_hash[..16]),
            max_bytes,
        };
        cache.sweep();
        Ok(cache)
    }

    pub(crate) fn path(&self, module: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex::encode(module), self.engine))
    }

    fn tag(&self, module: &[u8; 32], artifact: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(module);
        mac.update(self.engine.as_bytes());
        mac.update(artifact);
        mac.finalize().into_bytes().into()
    }

    /// The artifact for `module`, if present and authentic.
    pub(crate) fn load(&self, module: &[u8; 32]) -> Result<Vec<u8>, Miss> {
        let path = self.path(module);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) => return Err(self.reject(&path, format!("unreadable: {e}"))),
        };
        let header = MAGIC.len() + TAG_LEN;
        if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
            return Err(self.reject(&path, "not a zkmesh cache file".into()));
        }
        let (tag, artifact) = bytes[MAGIC.len()..].split_at(TAG_LEN);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(module);
        mac.update(self.engine.as_bytes());
        mac.update(artifact);
        if mac.verify_slice(tag).is_err() {
            return Err(self.reject(&path, "its MAC does not match this worker's key".into()));
        }
        self.touch(module);
        Ok(artifact.to_vec())
    }

    /// Marks `module`'s artifact as just used: last in line for eviction. (Setting the time
    /// needs ownership of the file, not write permission.)
    pub(crate) fn touch(&self, module: &[u8; 32]) {
        let path = self.path(module);
        let touched =
            fs::File::open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not mark a cached module as used");
        }
    }

    fn reject(&self, path: &Path, why: String) -> Miss {
        tracing::warn!(path = %path.display(), reason = %why, "compiled-module cache file rejected");
        let _ = fs::remove_file(path);
        Miss::Rejected
    }

    /// Stores `artifact` for `module` (atomically: a reader sees the old file or the new one).
    pub(crate) fn store(&self, module: &[u8; 32], artifact: &[u8]) -> std::io::Result<()> {
        let path = self.path(module);
        let size = (MAGIC.len() + TAG_LEN + artifact.len()) as u64;
        if size > self.max_bytes {
            tracing::info!(
                bytes = size,
                budget = self.max_bytes,
                "compiled module larger than the whole cache budget: not cached"
            );
            return Ok(());
        }
        // A name no other writer (thread or process) uses; a crash can leave it behind, and
        // `open` removes such leftovers once they are old.
        let tmp = self.dir.join(format!("{}.tmp", random_hex()));
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&self.tag(module, artifact))?;
            f.write_all(artifact)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.evict(&path);
        Ok(())
    }

    /// Deletes the least recently used artifacts (never `keep`) until the rest fit the budget.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), bytes = size, "compiled module evicted from the cache");
                total -= size;
            }
        }
    }

    /// Removes temporary files more than an hour old: left by a writer that crashed (a live
    /// writer renames its file within moments).
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let hour = std::time::Duration::from_secs(3600);
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > hour));
            if stale && path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// SHA-256 over whatever wasmtime feeds its compatibility hash: the wasmtime version, the
/// compiler and its flags, and every setting that changes generated code.
pub(crate) fn engine_hash(engine: &wasmtime::Engine) -> [u8; 32] {
    struct Sha(Sha256);
    impl std::hash::Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only written to")
        }
    }
    let mut h = Sha(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    h.0.finalize().into()
}
