//! Owns the example and hostile guest programs: their compiled WebAssembly, what each one
//! computes, and a native reference implementation to check their output against.
//!
//! # Core concepts
//!
//! - A [`Guest`] is a well-behaved program, built from the Rust crates in `guests/programs` by
//!   `build.rs`. It speaks one of two ABIs ([`GuestAbi`]): the zkmesh ABI (imports only
//!   `zkmesh.input_len`, `zkmesh.read_input` and `zkmesh.write_output`; exports `memory` and
//!   `run`), or WASI preview 1 (stdin in, stdout out).
//! - [`reference_output`] computes what a guest must write, natively and independently of the
//!   guest's code, so a runtime can be tested against it.
//! - A [`Hostile`] module misbehaves on purpose (loops, traps, exhausts memory, stack or output,
//!   imports what it must not, or is not a module at all); its `expect` tag names the terminal
//!   state a sandbox should report for it.
//!
//! # Example
//!
//! ```
//! let sort = zkmesh_guests::get("sort").unwrap();
//! assert_eq!(sort.abi, zkmesh_guests::GuestAbi::Zkmesh);
//! assert!(sort.wasm.starts_with(b"\0asm"));
//! let expected = zkmesh_guests::reference_output("sort", b"3 -1 2").unwrap();
//! assert_eq!(expected, b"-1 2 3");
//! ```

use sha2::{Digest, Sha256};

/// How a guest receives its input and returns its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAbi {
    /// `zkmesh.{input_len, read_input, write_output}` imports, `memory` and `run` exports.
    Zkmesh,
    /// A WASI preview 1 command: the input is stdin, the output is stdout.
    Wasi,
}

/// A well-behaved guest program.
pub struct Guest {
    pub name: &'static str,
    pub abi: GuestAbi,
    /// The compiled module.
    pub wasm: &'static [u8],
    /// One line on what it computes and what input it takes.
    pub about: &'static str,
    /// A valid input that runs quickly.
    pub sample_input: &'static [u8],
}

/// A module that misbehaves on purpose. Each one ends in its `expect`ed state under
/// [`HOSTILE_LIMITS`].
pub struct Hostile {
    pub name: &'static str,
    /// The compiled module (or, for `invalid_module`, bytes that are not one).
    pub wasm: &'static [u8],
    /// The terminal state a sandbox should report: `timeout_or_out_of_fuel`, `out_of_memory`,
    /// `trap`, `stack_exhausted`, `output_too_large`, `forbidden_import` or `invalid_module`.
    pub expect: &'static str,
    /// What it does, in one line.
    pub about: &'static str,
}

/// Limits under which every hostile module ends in its `expect`ed state: memory in MiB, fuel.
/// (`slow_compile` needs a compile timeout under one second as well.)
pub const HOSTILE_LIMITS: (u32, u64) = (16, 200_000_000);

macro_rules! guest_wasm {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".wasm"))
    };
}

macro_rules! hostile_wasm {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/hostile/", $name, ".wasm"))
    };
}

static GUESTS: [Guest; 6] = [
    Guest {
        name: "sha256",
        abi: GuestAbi::Zkmesh,
        wasm: guest_wasm!("sha256"),
        about: "lowercase hex SHA-256 of the whole input",
        sample_input: b"hello, zkmesh",
    },
    Guest {
        name: "sort",
        abi: GuestAbi::Zkmesh,
        wasm: guest_wasm!("sort"),
        about: "sorts whitespace-separated i64s ascending, joined by single spaces; \
                traps on a token that is not -?[0-9]+ within i64",
        sample_input: b"42 -7 0 19\n-7 3 1000000 -12",
    },
    Guest {
        name: "bytesum",
        abi: GuestAbi::Zkmesh,
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/wat/bytesum.wasm")),
        about: "the sum of the input's bytes (mod 2^32) in decimal; written in WAT, small \
                enough to prove in the smallest zkVM class",
        sample_input: b"hi",
    },
    Guest {
        name: "collatz",
        abi: GuestAbi::Zkmesh,
        wasm: guest_wasm!("collatz"),
        about: "for decimal N, \"{total Collatz steps over 1..=N} {smallest n with the most steps}\"; \
                time grows with N (3000000 is about 4.3e8 steps)",
        sample_input: b"10000",
    },
    Guest {
        name: "primes",
        abi: GuestAbi::Wasi,
        wasm: guest_wasm!("primes"),
        about: "for decimal N, \"{number of primes <= N} {largest prime <= N, or 0}\\n\" by a sieve \
                of N + 1 bytes",
        sample_input: b"100000",
    },
    Guest {
        name: "wordcount",
        abi: GuestAbi::Wasi,
        wasm: guest_wasm!("wordcount"),
        about: "\"{lines} {words} {bytes}\\n\" like wc, words being runs of non-ASCII-whitespace bytes",
        sample_input: b"the quick brown fox\njumps over\nthe lazy dog\n",
    },
];

static HOSTILE: [Hostile; 16] = [
    Hostile {
        name: "infinite_loop",
        wasm: hostile_wasm!("infinite_loop"),
        expect: "timeout_or_out_of_fuel",
        about: "loops forever without calls",
    },
    Hostile {
        name: "memory_bomb",
        wasm: hostile_wasm!("memory_bomb"),
        expect: "out_of_memory",
        about: "grows memory a page at a time until a grow fails, then traps",
    },
    Hostile {
        name: "trap",
        wasm: hostile_wasm!("trap"),
        expect: "trap",
        about: "executes unreachable",
    },
    Hostile {
        name: "div_by_zero",
        wasm: hostile_wasm!("div_by_zero"),
        expect: "trap",
        about: "divides by a zero loaded from memory",
    },
    Hostile {
        name: "deep_recursion",
        wasm: hostile_wasm!("deep_recursion"),
        expect: "stack_exhausted",
        about: "recurses without a base case",
    },
    Hostile {
        name: "huge_output",
        wasm: hostile_wasm!("huge_output"),
        expect: "output_too_large",
        about: "writes its whole memory as output, forever",
    },
    Hostile {
        name: "forbidden_import",
        wasm: hostile_wasm!("forbidden_import"),
        expect: "forbidden_import",
        about: "imports env.launch_missiles, which no host provides",
    },
    Hostile {
        name: "invalid_module",
        wasm: hostile_wasm!("invalid_module"),
        expect: "invalid_module",
        about: "a type section whose declared size runs past the end of the file",
    },
    Hostile {
        name: "truncated_module",
        wasm: hostile_wasm!("truncated_module"),
        expect: "invalid_module",
        about: "the bytesum guest with its last nine bytes cut off",
    },
    Hostile {
        name: "table_bomb",
        wasm: hostile_wasm!("table_bomb"),
        expect: "out_of_memory",
        about: "grows its table a thousand entries at a time until a grow fails, then traps",
    },
    Hostile {
        name: "start_never_returns",
        wasm: hostile_wasm!("start_never_returns"),
        expect: "timeout_or_out_of_fuel",
        about: "its start function, run during instantiation, loops forever",
    },
    Hostile {
        name: "huge_data_segment",
        wasm: hostile_wasm!("huge_data_segment"),
        expect: "out_of_memory",
        about: "a 4 MiB data segment at the top of a 64 MiB initial memory",
    },
    Hostile {
        name: "slow_compile",
        wasm: hostile_wasm!("slow_compile"),
        expect: "invalid_module",
        about: "half a megabyte that takes Cranelift seconds (1000 nested blocks, 200 br_tables \
                to all of them, 500 live locals); refused by a compile timeout under a second",
    },
    Hostile {
        name: "stdout_flood",
        wasm: hostile_wasm!("stdout_flood"),
        expect: "output_too_large",
        about: "a WASI command writing 64 KiB to stdout forever, ignoring fd_write's errors",
    },
    Hostile {
        name: "gc_bomb",
        wasm: hostile_wasm!("gc_bomb"),
        expect: "invalid_module",
        about: "allocates Wasm GC structs forever; GC (memory outside the limit) is not enabled",
    },
    Hostile {
        name: "sleeps_forever",
        wasm: hostile_wasm!("sleeps_forever"),
        expect: "timeout_or_out_of_fuel",
        about: "sleeps 585 years, then an hour at a time forever (poll_oneoff); guest time is \
                frozen, so each sleep returns at once and only fuel or the clock stop it",
    },
];

/// The benchmark guest (`programs/kernels`): `sha256 <bytes>`, `sort <n>` or `sieve <n>` run
/// the kernels in `programs/kernels/src/kernels.rs`, which [`kernels`] is compiled from too. Not
/// among [`all`]: it exists to compare the sandbox with native code.
pub static KERNELS_WASM: &[u8] = guest_wasm!("kernels");

/// The benchmark kernels compiled natively: the same source as [`KERNELS_WASM`].
#[path = "../programs/kernels/src/kernels.rs"]
pub mod kernels;

/// What [`KERNELS_WASM`] writes for `input`, computed natively by the same kernels (`None`
/// where the guest traps).
pub fn kernels_output(input: &[u8]) -> Option<Vec<u8>> {
    let space = input.iter().position(|&b| b == b' ')?;
    let (name, arg) = (&input[..space], &input[space + 1..]);
    let number = || -> Option<usize> {
        if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(arg).ok()?.parse().ok()
    };
    Some(match name {
        b"sha256" => hex(&kernels::sha256(arg)).into_bytes(),
        b"sort" => kernels::sort(&mut vec![0; number()?], 0x9e37_79b9_7f4a_7c15)
            .to_string()
            .into_bytes(),
        b"sieve" => {
            let (count, largest) = kernels::sieve(&mut vec![0; number()? + 1]);
            format!("{count} {largest}").into_bytes()
        }
        _ => return None,
    })
}

/// All well-behaved guests.
pub fn all() -> &'static [Guest] {
    &GUESTS
}

/// The guest called `name`, if there is one.
pub fn get(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}

/// All hostile modules.
pub fn hostile() -> &'static [Hostile] {
    &HOSTILE
}

/// The hostile module called `name`, if there is one.
pub fn hostile_by_name(name: &str) -> Option<&'static Hostile> {
    HOSTILE.iter().find(|h| h.name == name)
}

/// The exact bytes guest `name` writes for `input`, computed natively. `None` for an unknown
/// guest or for input the guest rejects (where it traps or exits with an error).
///
/// These are written independently of the guests (library SHA-256, std sort, a different loop
/// structure) so that a bug in one is not silently mirrored in the other.
pub fn reference_output(name: &str, input: &[u8]) -> Option<Vec<u8>> {
    match name {
        "sha256" => Some(hex(&Sha256::digest(input)).into_bytes()),
        "sort" => sort(input),
        "bytesum" => Some(
            input
                .iter()
                .fold(0u32, |s, b| s.wrapping_add(u32::from(*b)))
                .to_string()
                .into_bytes(),
        ),
        "collatz" => collatz(parse_u32(input)?),
        "primes" => Some(primes(parse_u32(input)?)),
        "wordcount" => Some(wordcount(input)),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A decimal `u32` between optional ASCII whitespace, as the `collatz` and `primes` guests
/// accept it (no sign, unlike `str::parse`).
fn parse_u32(input: &[u8]) -> Option<u32> {
    let digits = input.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn sort(input: &[u8]) -> Option<Vec<u8>> {
    let mut nums = input
        .split(u8::is_ascii_whitespace)
        .filter(|token| !token.is_empty())
        .map(|token| {
            // The guest's grammar is -?[0-9]+; `str::parse` alone would also take a '+'.
            let digits = token.strip_prefix(b"-").unwrap_or(token);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(token).ok()?.parse::<i64>().ok()
        })
        .collect::<Option<Vec<i64>>>()?;
    nums.sort();
    let strings: Vec<String> = nums.iter().map(i64::to_string).collect();
    Some(strings.join(" ").into_bytes())
}

fn collatz(n: u32) -> Option<Vec<u8>> {
    // Memoised, unlike the guest: a different algorithm to check it against, and about ten
    // times fewer steps, which matters in unoptimised test builds (N = 3,000,000 is a test load).
    // Capped so that a huge N costs time, not 16 GiB.
    let mut known = vec![0u32; (n as usize).min(1 << 24) + 1];
    let mut total = 0u64;
    let mut best: Option<(u32, u32)> = None; // (steps, n)
    for start in 1..=n {
        let mut steps = 0u32;
        let mut x = u64::from(start);
        while x != 1 {
            // Every n below `start` is done, so the rest of this trajectory is already known.
            if x < u64::from(start) && (x as usize) < known.len() {
                steps += known[x as usize];
                break;
            }
            x = if x.is_multiple_of(2) {
                x >> 1
            } else {
                // The guest traps when a trajectory leaves u64, so there is no output to match.
                // A memoised tail was checked when it was computed.
                x.checked_mul(3)?.checked_add(1)?
            };
            steps += 1;
        }
        if let Some(slot) = known.get_mut(start as usize) {
            *slot = steps;
        }
        total += u64::from(steps);
        if best.is_none_or(|(most, _)| steps > most) {
            best = Some((steps, start));
        }
    }
    let argmax = best.map_or(0, |(_, n)| n);
    Some(format!("{total} {argmax}").into_bytes())
}

fn primes(n: u32) -> Vec<u8> {
    // Trial division by the primes found so far, up to the square root: slower than the guest's
    // sieve but built differently, and fast enough for test-sized N.
    let mut found: Vec<u32> = Vec::new();
    for candidate in 2..=n {
        let is_prime = found
            .iter()
            .take_while(|&&p| u64::from(p) * u64::from(p) <= u64::from(candidate))
            .all(|&p| candidate % p != 0);
        if is_prime {
            found.push(candidate);
        }
    }
    let largest = found.last().copied().unwrap_or(0);
    format!("{} {largest}\n", found.len()).into_bytes()
}

fn wordcount(input: &[u8]) -> Vec<u8> {
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    let words = input
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .count();
    format!("{lines} {words} {}\n", input.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{Parser, Payload, Validator};

    struct Interface {
        imports: Vec<(String, String)>,
        exports: Vec<String>,
    }

    fn interface(wasm: &[u8]) -> Interface {
        let mut iface = Interface {
            imports: Vec::new(),
            exports: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.expect("parse") {
                Payload::ImportSection(section) => {
                    for import in section.into_imports() {
                        let import = import.expect("import");
                        iface
                            .imports
                            .push((import.module.to_string(), import.name.to_string()));
                    }
                }
                Payload::ExportSection(section) => {
                    for export in section {
                        iface.exports.push(export.expect("export").name.to_string());
                    }
                }
                _ => {}
            }
        }
        iface
    }

    #[test]
    fn every_guest_is_a_valid_module() {
        assert_eq!(all().len(), 6);
        for guest in all() {
            assert!(guest.wasm.starts_with(b"\0asm\x01\0\0\0"), "{}", guest.name);
            Validator::new()
                .validate_all(guest.wasm)
                .unwrap_or_else(|e| panic!("{}: {e}", guest.name));
            assert!(std::ptr::eq(get(guest.name).unwrap(), guest));
            assert!(reference_output(guest.name, guest.sample_input).is_some());
        }
        assert!(get("nope").is_none());
    }

    #[test]
    fn zkmesh_guests_import_only_the_abi_and_export_memory_and_run() {
        const ABI: [&str; 3] = ["input_len", "read_input", "write_output"];
        for guest in all().iter().filter(|g| g.abi == GuestAbi::Zkmesh) {
            let iface = interface(guest.wasm);
            for (module, name) in &iface.imports {
                assert_eq!(module, "zkmesh", "{}", guest.name);
                assert!(ABI.contains(&name.as_str()), "{}: {name}", guest.name);
            }
            for export in ["memory", "run"] {
                assert!(
                    iface.exports.iter().any(|e| e == export),
                    "{} lacks export {export}",
                    guest.name
                );
            }
        }
    }

    #[test]
    fn wasi_guests_import_only_wasi_preview1() {
        for guest in all().iter().filter(|g| g.abi == GuestAbi::Wasi) {
            let iface = interface(guest.wasm);
            assert!(!iface.imports.is_empty(), "{}", guest.name);
            for (module, name) in &iface.imports {
                assert_eq!(module, "wasi_snapshot_preview1", "{}: {name}", guest.name);
            }
            assert!(
                iface.exports.iter().any(|e| e == "_start"),
                "{}",
                guest.name
            );
        }
    }

    #[test]
    fn hostile_modules_are_valid_except_the_invalid_one() {
        let names: Vec<&str> = hostile().iter().map(|h| h.name).collect();
        assert_eq!(
            names,
            [
                "infinite_loop",
                "memory_bomb",
                "trap",
                "div_by_zero",
                "deep_recursion",
                "huge_output",
                "forbidden_import",
                "invalid_module",
                "truncated_module",
                "table_bomb",
                "start_never_returns",
                "huge_data_segment",
                "slow_compile",
                "stdout_flood",
                "gc_bomb",
                "sleeps_forever"
            ]
        );
        for h in hostile() {
            assert!(h.wasm.starts_with(b"\0asm\x01\0\0\0"), "{}", h.name);
            let valid = Validator::new().validate_all(h.wasm).is_ok();
            let broken = matches!(h.name, "invalid_module" | "truncated_module");
            assert_eq!(valid, !broken, "{}", h.name);
            assert!(std::ptr::eq(hostile_by_name(h.name).unwrap(), h));
        }
        let forbidden = interface(hostile_by_name("forbidden_import").unwrap().wasm);
        assert_eq!(
            forbidden.imports,
            [("env".to_string(), "launch_missiles".to_string())]
        );
        assert!(hostile_by_name("nope").is_none());
    }

    fn out(name: &str, input: &str) -> Option<String> {
        reference_output(name, input.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            out("sha256", "abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            out("sha256", "").unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sort_known_answers() {
        assert_eq!(out("sort", "3 -1 2").unwrap(), "-1 2 3");
        assert_eq!(out("sort", "  \n\t").unwrap(), "");
        assert_eq!(out("sort", "5\r\n005 -0").unwrap(), "0 5 5");
        assert_eq!(
            out("sort", "9223372036854775807 -9223372036854775808").unwrap(),
            "-9223372036854775808 9223372036854775807"
        );
        for bad in ["+1", "1.5", "-", "--1", "1-2", "9223372036854775808", "x"] {
            assert_eq!(out("sort", bad), None, "{bad}");
        }
    }

    #[test]
    fn collatz_known_answers() {
        // Steps: 1:0 2:1 3:7 4:2 5:5 6:8 7:16.
        assert_eq!(out("collatz", "0").unwrap(), "0 0");
        assert_eq!(out("collatz", "1").unwrap(), "0 1");
        assert_eq!(out("collatz", "3").unwrap(), "8 3");
        assert_eq!(out("collatz", " 7\n").unwrap(), "39 7");
        // 27 takes 111 steps, famously, and is the first to need more than 100.
        assert!(out("collatz", "27").unwrap().ends_with(" 27"));
        for bad in ["", "-1", "+1", "1 2", "4294967296", "x"] {
            assert_eq!(out("collatz", bad), None, "{bad}");
        }
    }

    #[test]
    fn primes_known_answers() {
        assert_eq!(out("primes", "100").unwrap(), "25 97\n");
        assert_eq!(out("primes", "0").unwrap(), "0 0\n");
        assert_eq!(out("primes", "1").unwrap(), "0 0\n");
        assert_eq!(out("primes", "2\n").unwrap(), "1 2\n");
        assert_eq!(out("primes", "100000").unwrap(), "9592 99991\n");
        assert_eq!(out("primes", "ten"), None);
    }

    #[test]
    fn wordcount_known_answers() {
        assert_eq!(out("wordcount", "a b\nc\n").unwrap(), "2 3 6\n");
        assert_eq!(out("wordcount", "").unwrap(), "0 0 0\n");
        assert_eq!(out("wordcount", "  one\ttwo  ").unwrap(), "0 2 11\n");
        assert_eq!(
            reference_output("wordcount", b"\xff\xfe x").unwrap(),
            b"0 2 4\n"
        );
    }

    #[test]
    fn unknown_guest_has_no_reference() {
        assert_eq!(reference_output("launch_missiles", b""), None);
    }
}
