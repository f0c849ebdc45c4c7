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
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(command).current_dir(root);
    run_command(sh, "the build command", timeout)
}

/// Runs `command` (named `what` in errors) in a process group of its own, with its output streamed to the log and
/// its tail kept; after `timeout` the whole group is killed. When it ends, whatever it left
/// running in its group is killed too, so a stray background child can neither hold its
/// output open nor outlive the update.
pub fn run_command(mut command: Command, what: &str, timeout: Duration) -> BuildOutcome {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return BuildOutcome {
                error: Some(format!("cannot run {command:?}: {e}")),
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
    let kill_group = || {
        // SAFETY: `killpg` on the process group created for this command. Once its leader
        // is reaped the group lives on only while members remain; with none left, this is
        // ESRCH and harmless.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    };
    let (ok, error) = match rx.recv_timeout(timeout) {
        Ok(Ok(status)) if status.success() => (true, None),
        Ok(Ok(status)) => (false, Some(format!("{what} failed ({status})"))),
        Ok(Err(e)) => (false, Some(format!("waiting for {what}: {e}"))),
        Err(_) => {
            kill_group();
            let _ = rx.recv();
            let why = format!("timed out after {}s and was killed", timeout.as_secs());
            (false, Some(format!("{what} {why}")))
        }
    };
    kill_group();
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
