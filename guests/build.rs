//! Builds the guest programs in `programs/` to wasm32 with a nested cargo, and the hostile `.wat`
//! fixtures in `hostile/` with the `wat` crate, leaving every `.wasm` in `OUT_DIR` for `lib.rs`
//! to `include_bytes!`.
//!
//! Nothing is written into the source tree: the nested build uses `--locked` against the
//! committed `programs/Cargo.lock` and its own target directory under `OUT_DIR`.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guests per target triple. Keep in sync with `programs/Cargo.toml` and `src/lib.rs`.
const TARGETS: &[(&str, &[&str])] = &[
    (
        "wasm32-unknown-unknown",
        &["sha256", "sort", "collatz", "kernels"],
    ),
    ("wasm32-wasip1", &["primes", "wordcount"]),
];

/// Not a module: the right magic and version, then a type section whose declared size runs past
/// the end of the file. Generated here so that no binary is committed.
const INVALID_MODULE: &[u8] = b"\0asm\x01\0\0\0\x01\xff\xff";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    ensure_targets();
    build_programs(&manifest_dir.join("programs"), &out_dir);
    build_hostile(&manifest_dir.join("hostile"), &out_dir.join("hostile"));
    build_wat(&manifest_dir.join("wat"), &out_dir.join("wat"));
}

/// Well-behaved guests written by hand in the text format.
fn build_wat(dir: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    fs::create_dir_all(out_dir).expect("create OUT_DIR/wat");
    for entry in fs::read_dir(dir).expect("read guests/wat") {
        let path = entry.expect("read guests/wat entry").path();
        if path.extension() != Some(OsStr::new("wat")) {
            continue;
        }
        let wasm =
            wat::parse_file(&path).unwrap_or_else(|e| panic!("compiling {}: {e}", path.display()));
        let dest = out_dir.join(path.with_extension("wasm").file_name().expect("file name"));
        fs::write(&dest, wasm).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
    }
}

/// Makes sure the toolchain has the guests' wasm32 targets. rustup installs a toolchain file's
/// targets only when it installs the toolchain, so a machine that already had the pinned
/// toolchain lacks them: add them here with rustup, or stop with the one command that does.
fn ensure_targets() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = |triple: &str| {
        sysroot.as_ref().is_some_and(|root| {
            fs::read_dir(root.join("lib/rustlib").join(triple).join("lib")).is_ok_and(|dir| {
                dir.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
        })
    };
    let missing: Vec<&str> = TARGETS
        .iter()
        .map(|(triple, _)| *triple)
        .filter(|t| !installed(t))
        .collect();
    if missing.is_empty() {
        return;
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    let fix = match &toolchain {
        Some(t) => format!("rustup target add --toolchain {t} {}", missing.join(" ")),
        None => format!("rustup target add {}", missing.join(" ")),
    };
    println!("cargo:warning=adding the missing wasm32 targets for the guests: {fix}");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    let added = cmd.args(&missing).status().is_ok_and(|s| s.success());
    if !added || missing.iter().any(|t| !installed(t)) {
        panic!(
            "the guest programs need the targets {} and this toolchain lacks them; \
             install them with:\n    {fix}",
            missing.join(", ")
        );
    }
}

fn build_programs(programs: &Path, out_dir: &Path) {
    // A directory makes cargo rescan everything below it, which covers new files and crates.
    // Nothing under it is written by this build, so this does not retrigger itself.
    println!("cargo:rerun-if-changed={}", programs.display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("programs-target");
    for (triple, guests) in TARGETS {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(programs)
            .arg("build")
            .arg("--manifest-path")
            .arg(programs.join("Cargo.toml"))
            .args(["--release", "--locked", "--offline", "--target", triple])
            .arg("--target-dir")
            .arg(&target_dir);
        for guest in *guests {
            cmd.args(["-p", guest]);
        }
        scrub_env(&mut cmd);

        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", Path::new(&cargo).display()));
        if !output.status.success() {
            panic!(
                "building the guest programs for {triple} failed ({}).\n\
                 If the target is missing: rustup target add wasm32-unknown-unknown wasm32-wasip1\n\
                 --- cargo stderr ---\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
            );
        }

        for guest in *guests {
            let built = target_dir
                .join(triple)
                .join("release")
                .join(format!("{guest}.wasm"));
            let dest = out_dir.join(format!("{guest}.wasm"));
            fs::copy(&built, &dest).unwrap_or_else(|e| {
                panic!("copying {} to {}: {e}", built.display(), dest.display())
            });
        }
    }
}

/// Removes what the outer build hands to build scripts that would change how the guests are
/// compiled: flags and wrappers meant for the host target, the outer target directory and
/// profile, and the jobserver (the nested cargo runs its own). `RUSTUP_TOOLCHAIN`, `RUSTC` and
/// `CARGO_HOME` stay, so the guests are built by the same toolchain with the same caches.
fn scrub_env(cmd: &mut Command) {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_INCREMENTAL",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
    ];
    // CARGO_TARGET_ covers CARGO_TARGET_DIR and per-triple linker/rustflags/runner settings;
    // CARGO_BUILD_ covers build.target, build.rustflags and the wrappers.
    const PREFIXES: &[&str] = &[
        "CARGO_ENCODED_",
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_LLVM_COV",
        "DEP_",
    ];
    for (key, _) in env::vars_os() {
        let Some(key_str) = key.to_str() else {
            continue;
        };
        if EXACT.contains(&key_str) || PREFIXES.iter().any(|p| key_str.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

fn build_hostile(hostile: &Path, out_dir: &Path) {
    println!("cargo:rerun-if-changed={}", hostile.display());
    fs::create_dir_all(out_dir).expect("create OUT_DIR/hostile");

    let mut entries: Vec<PathBuf> = fs::read_dir(hostile)
        .expect("read guests/hostile")
        .map(|e| e.expect("read guests/hostile entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("wat")))
        .collect();
    entries.sort();
    for wat_path in entries {
        let wasm = wat::parse_file(&wat_path)
            .unwrap_or_else(|e| panic!("compiling {}: {e}", wat_path.display()));
        let dest = out_dir.join(
            wat_path
                .with_extension("wasm")
                .file_name()
                .expect("file name"),
        );
        fs::write(&dest, wasm).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
    }
    fs::write(out_dir.join("invalid_module.wasm"), INVALID_MODULE)
        .expect("write invalid_module.wasm");
    for (name, wat) in [
        ("slow_compile", slow_compile_wat()),
        ("huge_data_segment", huge_data_segment_wat()),
    ] {
        let wasm = wat::parse_str(&wat).unwrap_or_else(|e| panic!("generating {name}: {e}"));
        fs::write(out_dir.join(format!("{name}.wasm")), wasm)
            .unwrap_or_else(|e| panic!("writing {name}.wasm: {e}"));
    }
    // A real module (the bytesum guest) with its last nine bytes cut off.
    let whole = wat::parse_file(hostile.join("../wat/bytesum.wat")).expect("bytesum.wat");
    fs::write(
        out_dir.join("truncated_module.wasm"),
        &whole[..whole.len() - 9],
    )
    .expect("write truncated_module.wasm");
}

/// Half a megabyte of WebAssembly that takes Cranelift seconds: one function of 1000 nested
/// blocks over 500 live locals, with 10000 branches, 200 of them `br_table`s to every block.
/// The control-flow graph has millions of edges for the register allocator, yet the module is
/// small, valid, and would return at once if it ever ran.
fn slow_compile_wat() -> String {
    use std::fmt::Write;
    const DEPTH: usize = 1000;
    const BRANCHES: usize = 10_000;
    const LOCALS: u64 = 500;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut s = String::from("(module (memory (export \"memory\") 1)\n(func $f (param i32) (local");
    for _ in 0..LOCALS {
        s.push_str(" i64");
    }
    s.push_str(")\n");
    for d in 0..DEPTH {
        writeln!(s, "(block $b{d}").unwrap();
    }
    let mut targets = String::new();
    for d in 0..DEPTH {
        write!(targets, " $b{d}").unwrap();
    }
    for r in 0..BRANCHES {
        let (x, y, z) = (next(LOCALS) + 1, next(LOCALS) + 1, next(LOCALS) + 1);
        writeln!(
            s,
            "(local.set {z} (i64.add (local.get {x}) (local.get {y})))"
        )
        .unwrap();
        if r % 50 == 0 {
            writeln!(s, "(br_table{targets} (local.get 0))").unwrap();
        } else {
            let b = next(DEPTH as u64);
            writeln!(s, "(br_if $b{b} (i32.wrap_i64 (local.get {x})))").unwrap();
        }
    }
    for _ in 0..DEPTH {
        let (x, y) = (next(LOCALS) + 1, next(LOCALS) + 1);
        writeln!(
            s,
            ")\n(local.set {x} (i64.mul (local.get {x}) (local.get {y})))"
        )
        .unwrap();
    }
    s.push_str(")\n(func (export \"run\") (call $f (i32.const 0))))");
    s
}

/// A module with a 4 MiB active data segment at the top of its 64 MiB initial memory: cheap to
/// compile, but it cannot start under a memory limit below 64 MiB, and a module-size cap below
/// 4 MiB refuses it outright.
fn huge_data_segment_wat() -> String {
    let mut s = String::from(
        "(module (memory (export \"memory\") 1024)\n(func (export \"run\"))\n(data (i32.const 62914560) \"",
    );
    s.push_str(&"\\ab".repeat(4 << 20));
    s.push_str("\"))");
    s
}
