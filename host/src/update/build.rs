//! Runs the build command: `sh -c <command>` in the checkout root, in its own process group,
//! its output streamed to the log and its tail kept; killed as a group on timeout.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How much of each stream the result keeps.
const TAIL_BYTES: usize = 8 * 1024;

/// What the build did.
#[derive(Debug, Default)]
pub struct BuildOutcome {
    /// It exited 0 in time.
    pub ok: bool,
    /// The tail of its stdout.
    pub stdout: String,
    /// The tail of its stderr.
    pub stderr: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

fn tail(text: &mut String) {
    if text.len() > TAIL_BYTES {
        let mut cut = text.len() - TAIL_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
}

fn pump(stream: impl Read + Send + 'static, name: &'static str) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = String::new();
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            tracing::info!(target: "paglets::build", stream = name, "{line}");
            kept.push_str(&line);
            kept.push('\n');
            tail(&mut kept);
        }
        kept
    })
}

/// Runs `command` in `root`, killing its process group after `timeout`.
pub fn run(command: &str, root: &Path, timeout: Duration) -> BuildOutcome {
    tracing::info!(command, root = %root.display(), "building");
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return BuildOutcome {
                error: Some(format!("cannot run sh -c {command:?}: {e}")),
                ..Default::default()
            };
        }
    };
    let pgid = child.id() as i32;
    let out = child.stdout.take().map(|s| pump(s, "stdout"));
    let err = child.stderr.take().map(|s| pump(s, "stderr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (ok, error) = match rx.recv_timeout(timeout) {
        Ok(Ok(status)) if status.success() => (true, None),
        Ok(Ok(status)) => (false, Some(format!("the build command failed ({status})"))),
        Ok(Err(e)) => (false, Some(format!("waiting for the build: {e}"))),
        Err(_) => {
            // SAFETY: `killpg` on the group we created for the child; it is still ours
            // because the waiter thread has not reaped it.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            let _ = rx.recv();
            (
                false,
                Some(format!(
                    "the build command timed out after {}s and was killed",
                    timeout.as_secs()
                )),
            )
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    BuildOutcome {
        ok,
        stdout,
        stderr,
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn output_is_kept_failures_and_timeouts_are_reported() {
        let dir = std::env::temp_dir();
        let ok = super::run("echo built; echo warn >&2", &dir, Duration::from_secs(30));
        assert!(
            ok.ok && ok.stdout == "built\n" && ok.stderr == "warn\n",
            "{ok:?}"
        );
        let failed = super::run("echo broken >&2; exit 3", &dir, Duration::from_secs(30));
        assert!(!failed.ok && failed.stderr.contains("broken"), "{failed:?}");
        assert!(
            failed
                .error
                .as_deref()
                .is_some_and(|e| e.contains("exit status: 3")),
            "{failed:?}"
        );
        let hung = super::run("sleep 30 & wait", &dir, Duration::from_millis(200));
        assert!(
            hung.error
                .as_deref()
                .is_some_and(|e| e.contains("timed out")),
            "{hung:?}"
        );
    }
}
