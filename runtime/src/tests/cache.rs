//! The disk cache: a hit never recompiles, and a cache file this sandbox's key does not
//! authenticate is deleted and rebuilt, never loaded.

use super::*;

fn cached(dir: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.to_path_buf()),
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn sha256_runs(sb: &Sandbox) {
    let sha = zkmesh_guests::get("sha256").unwrap();
    let out = sb.run(sha.wasm, b"cache", &Limits::default(), b"");
    assert_eq!(out.exit, Exit::Ok, "{}", out.message);
    assert_eq!(
        out.output,
        zkmesh_guests::reference_output("sha256", b"cache").unwrap()
    );
}

fn artifact(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_cache_hit_never_recompiles() {
    let dir = tempfile::tempdir().unwrap();
    let first = cached(dir.path());
    sha256_runs(&first);
    sha256_runs(&first);
    let s = first.stats();
    assert_eq!((s.compiles, s.memory_hits, s.disk_hits), (1, 1, 0), "{s:?}");
    let name = artifact(dir.path());
    let sha = zkmesh_guests::get("sha256").unwrap();
    assert!(
        name.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&hex::encode(Sha256::digest(sha.wasm))),
        "{name:?}"
    );

    // A restarted worker loads it from disk.
    let second = cached(dir.path());
    sha256_runs(&second);
    let s = second.stats();
    assert_eq!(
        (s.compiles, s.disk_hits, s.disk_rejected),
        (0, 1, 0),
        "{s:?}"
    );
    // The same after dropping the in-memory copy.
    second.forget_compiled();
    sha256_runs(&second);
    assert_eq!(second.stats().disk_hits, 2);
    assert_eq!(second.stats().compiles, 0);
}

#[test]
fn a_tampered_cache_file_is_rejected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    sha256_runs(&cached(dir.path()));
    let path = artifact(dir.path());
    let good = std::fs::read(&path).unwrap();

    // One bit flipped in the compiled code.
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let sb = cached(dir.path());
    sha256_runs(&sb);
    let s = sb.stats();
    assert_eq!(
        (s.disk_rejected, s.disk_hits, s.compiles),
        (1, 0, 1),
        "{s:?}"
    );
    // Rebuilt: the file now holds a fresh artifact that loads.
    let rebuilt = std::fs::read(&path).unwrap();
    assert_ne!(rebuilt, bad);
    let next = cached(dir.path());
    sha256_runs(&next);
    assert_eq!(next.stats().disk_hits, 1);

    // Truncated, and a header with nothing after it.
    for cut in [good.len() - 100, 40] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let sb = cached(dir.path());
        sha256_runs(&sb);
        assert_eq!(sb.stats().disk_rejected, 1, "cut at {cut}");
        assert_eq!(sb.stats().compiles, 1);
    }

    // An artifact compiled by another worker (another key), even for the same module and
    // engine, is not this worker's: rejected.
    let other = tempfile::tempdir().unwrap();
    sha256_runs(&cached(other.path()));
    let foreign = std::fs::read(artifact(other.path())).unwrap();
    std::fs::write(&path, &foreign).unwrap();
    let sb = cached(dir.path());
    sha256_runs(&sb);
    assert_eq!(sb.stats().disk_rejected, 1);
    assert_eq!(sb.stats().compiles, 1);

    // A raw wasmtime artifact without our header: rejected too.
    let engine = &sb.engine;
    let raw = engine
        .precompile_module(zkmesh_guests::get("sha256").unwrap().wasm)
        .unwrap();
    std::fs::write(&path, &raw).unwrap();
    let sb = cached(dir.path());
    sha256_runs(&sb);
    assert_eq!(sb.stats().disk_rejected, 1);
}

#[test]
fn sandboxes_opening_one_new_cache_at_once_agree_on_its_key() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(6));
        let opened: Vec<_> = (0..6)
            .map(|_| {
                let (dir, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    crate::cache::DiskCache::open(&dir, [7; 32], 1 << 30).map(|c| c.key)
                })
            })
            .collect();
        let keys: Vec<[u8; 32]> = opened
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(
            std::fs::read(dir.path().join("cache.key")).unwrap(),
            keys[0]
        );
        // Nothing is left behind but the key.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[test]
fn threads_storing_one_artifact_at_once_leave_one_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(crate::cache::DiskCache::open(dir.path(), [7; 32], 1 << 30).unwrap());
    let artifact = vec![0xa5u8; 1 << 20];
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, artifact) = (cache.clone(), artifact.clone());
            std::thread::spawn(move || cache.store(&[1; 32], &artifact))
        })
        .collect();
    for w in writers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(cache.load(&[1; 32]).unwrap(), artifact);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "key and artifact"
    );
}

#[test]
fn the_cache_keeps_to_its_budget_evicting_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = vec![0x5au8; 100_000];
    // Room for two files of 100,040 bytes (header and artifact), not three.
    let cache = crate::cache::DiskCache::open(dir.path(), [7; 32], 250_000).unwrap();
    let age = |module: u8, secs: u64| {
        let f = std::fs::File::options()
            .write(true)
            .open(cache.path(&[module; 32]))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    };
    cache.store(&[1; 32], &artifact).unwrap();
    age(1, 300);
    cache.store(&[2; 32], &artifact).unwrap();
    age(2, 200);
    // Module 1 is used again, so module 2 is now the least recently used.
    assert_eq!(cache.load(&[1; 32]).unwrap(), artifact);
    cache.store(&[3; 32], &artifact).unwrap();
    assert!(cache.load(&[1; 32]).is_ok());
    assert!(matches!(
        cache.load(&[2; 32]),
        Err(crate::cache::Miss::Absent)
    ));
    assert!(cache.load(&[3; 32]).is_ok());
    // An artifact bigger than the whole budget is not stored, and evicts nothing.
    cache.store(&[4; 32], &vec![0u8; 300_000]).unwrap();
    assert!(matches!(
        cache.load(&[4; 32]),
        Err(crate::cache::Miss::Absent)
    ));
    assert!(cache.load(&[1; 32]).is_ok() && cache.load(&[3; 32]).is_ok());
}
