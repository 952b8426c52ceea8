//! How results, events and logs are shown: text for people, JSON for programs.

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;
use zkmesh_proto::*;

use crate::EXIT_TASK;

/// A wire enum's short name, or `none` for a value not set.
pub(crate) fn name_or_none(value: i32, name: fn(i32) -> &'static str) -> &'static str {
    if value == 0 { "none" } else { name(value) }
}

/// The JSON form of a result.
pub fn result_json(task: &Task, result: &TaskResult) -> serde_json::Value {
    let text = std::str::from_utf8(&result.output).ok();
    json!({
        "task_id": result.task_id,
        "state": TaskState::short_name_of(result.state),
        "exit": (result.exit != 0).then(|| ExitKind::short_name_of(result.exit)),
        "exit_message": result.exit_message,
        "output_base64": base64::engine::general_purpose::STANDARD.encode(&result.output),
        "output_text": text,
        "output_hash": result.output_hash,
        "fuel_used": result.fuel_used,
        "fuel_limit": task.fuel_limit,
        "policy": result.policy.unwrap_or_default().to_string(),
        "verdict": (result.verdict != 0).then(|| Verdict::short_name_of(result.verdict)),
        "verdict_reason": result.verdict_reason,
        "credits_charged": result.credits_charged,
        "credits_held": task.credits_held,
        "module_hash": task.module_hash,
        "input_hash": task.input_hash,
        "attempts": task.attempts,
        "run_time_us": result.run_time_us,
        "cpu_time_us": result.cpu_time_us,
        "receipts": result.receipts.iter().map(|r| json!({
            "node_id": r.node_id,
            "output_hash": r.output_hash,
            "fuel_used": r.fuel_used,
            "exit": name_or_none(r.exit, ExitKind::short_name_of),
            "signature": hex::encode(&r.signature),
        })).collect::<Vec<_>>(),
        "message": task.message,
        "proof": result.proof.as_ref().map(|p| json!({
            "circuit_class": p.circuit_class,
            "steps": p.steps,
            "segments": p.links.len() + 1,
            "status": p.halt_code(),
            "prove_time_ms": p.prove_time_ms,
            "verifying_key_sha256": p.verifying_key_sha256,
            "proof_base64": base64::engine::general_purpose::STANDARD.encode(&p.proof),
        })),
    })
}

/// Text from the mesh or a file (a node's exit message or guest log line, an event, a reason, a
/// bundle's fields) made safe for a terminal, on one line: control characters (newlines too,
/// which could add lines that look like the CLI's own) and the invisible format characters
/// that reorder or hide text (bidirectional overrides, zero-width marks) are shown as `\u{..}`
/// instead; tabs stay.
pub fn safe(text: &str) -> std::borrow::Cow<'_, str> {
    let hostile = |c: char| (c.is_control() && c != '\t') || invisible(c);
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if hostile(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Characters that change how text around them shows without showing themselves: Unicode's
/// format characters (bidirectional controls, zero-width marks, invisible operators, tags),
/// line and paragraph separators, and blank fillers.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{890}'
        | '\u{891}' | '\u{8e2}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}' | '\u{110bd}' | '\u{110cd}'
        | '\u{13430}'..='\u{1343f}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// 0 only for a task that completed and was verified.
pub fn task_exit_code(result: &TaskResult) -> i32 {
    let ok = result.state() == TaskState::Settled
        && result.exit() == ExitKind::Ok
        && result.verdict() == Verdict::Verified;
    if ok { 0 } else { EXIT_TASK }
}

/// Prints a result for people: the task line, the exit, the verdict, and the output unless written elsewhere.
pub(crate) fn print_result(
    task: &Task,
    result: &TaskResult,
    elapsed: Option<Duration>,
    body: bool,
) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "task     {}  {}  verdict: {} ({})",
        result.task_id,
        TaskState::short_name_of(result.state),
        name_or_none(result.verdict, Verdict::short_name_of),
        safe(&result.verdict_reason)
    );
    let _ = writeln!(
        out,
        "exit     {}: {}",
        name_or_none(result.exit, ExitKind::short_name_of),
        safe(if result.exit_message.is_empty() {
            &task.message
        } else {
            &result.exit_message
        })
    );
    let _ = writeln!(
        out,
        "fuel     {} of {}  ({} µs on the node, {} µs of CPU)",
        result.fuel_used, task.fuel_limit, result.run_time_us, result.cpu_time_us
    );
    let _ = writeln!(
        out,
        "credits  {} micro-credits charged (held {}, the rest refunded)",
        result.credits_charged, task.credits_held
    );
    if let Some(e) = elapsed {
        let _ = writeln!(
            out,
            "time     {:.1} ms submit to result",
            e.as_secs_f64() * 1000.0
        );
    }
    let _ = writeln!(
        out,
        "output   ({} bytes, sha256 {})",
        result.output.len(),
        result.output_hash
    );
    if !body {
        return;
    }
    // Text as text (lines ending in \n or \r\n); anything else that could steer the terminal
    // (other control characters, a lone \r, invisible format characters), or not UTF-8, as
    // base64.
    match std::str::from_utf8(&result.output) {
        Ok(text)
            if text
                .replace("\r\n", "\n")
                .split('\n')
                .all(|line| matches!(safe(line), std::borrow::Cow::Borrowed(_))) =>
        {
            let _ = writeln!(out, "{text}");
        }
        _ => {
            let _ = writeln!(
                out,
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(&result.output)
            );
        }
    }
}

/// Prints each event of a task on stderr as it arrives (nothing when `quiet`).
pub(crate) fn progress_printer(quiet: bool) -> impl FnMut(&TaskEvent) {
    let started = Instant::now();
    move |e: &TaskEvent| {
        if !quiet {
            eprintln!(
                "[{:>7.1} ms] {:<9} {}",
                started.elapsed().as_secs_f64() * 1000.0,
                TaskState::short_name_of(e.state),
                safe(&e.message)
            );
            print_log(e, |line| eprintln!("{line}"));
        }
    }
}

/// A guest's log output carried by an event, one `[guest] ` line per line.
pub(crate) fn print_log(e: &TaskEvent, mut print: impl FnMut(String)) {
    for line in e.log.lines() {
        print(format!("[guest] {}", safe(line)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_the_mesh_are_shown_not_obeyed() {
        // Clear the screen, rewrite the line, set the window title: all shown as text.
        let hostile = "ok\u{1b}[2J\rverified\u{1b}]0;pwned\u{7}\u{9b}31m\nnext\tline";
        let shown = safe(hostile);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\t'),
            "{shown}"
        );
        assert!(
            shown.contains("\\u{1b}[2J") && shown.contains("\\u{d}verified"),
            "{shown}"
        );
        assert!(shown.contains("\\u{9b}"), "C1 controls too: {shown}");
        // A newline would add a line that looks like the CLI's own; a bidi override would
        // reverse what follows it.
        assert_eq!(
            safe("exit: trap\ncredits  0 charged"),
            "exit: trap\\u{a}credits  0 charged"
        );
        assert_eq!(safe("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        for hidden in ['\u{ad}', '\u{2028}', '\u{e0041}', '\u{3164}', '\u{fffb}'] {
            assert!(safe(&format!("a{hidden}b")).contains("\\u{"), "{hidden:?}");
        }
        assert_eq!(safe("plain text\twith a tab"), "plain text\twith a tab");
    }
}
