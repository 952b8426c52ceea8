//! WASI guest: counts lines, words and bytes of stdin, like `wc`.
//!
//! stdout: `"{lines} {words} {bytes}\n"`, where lines counts b'\n' bytes, words counts maximal
//! runs of bytes that are not ASCII whitespace (so any bytes, UTF-8 or not, can be counted), and
//! bytes is the input length.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let (mut lines, mut words, mut bytes) = (0u64, 0u64, 0u64);
    // Whether the previous byte, possibly in the previous read, was inside a word.
    let mut in_word = false;
    // Streamed, so the input size is bounded by the host, not by the guest's memory.
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = std::io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("wordcount: reading stdin: {e}");
                return ExitCode::from(2);
            }
        };
        bytes += n as u64;
        for &b in &buf[..n] {
            lines += u64::from(b == b'\n');
            let space = b.is_ascii_whitespace();
            words += u64::from(!space && !in_word);
            in_word = !space;
        }
    }

    let mut stdout = std::io::stdout().lock();
    let written = writeln!(stdout, "{lines} {words} {bytes}").and_then(|()| stdout.flush());
    if written.is_err() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
