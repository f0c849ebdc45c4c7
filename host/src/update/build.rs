//! Runs the build command: `sh -c <command>` in the checkout root, in its own process group,
//! its output streamed to the log and its tail kept; killed as a group on timeout.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of each stream the result keeps.
const TAIL_BYTES: usize = 8 * 1024;
/// How long the output is still read after the command ended: a process that left its group
/// (a compiler cache server, anything started with `setsid`) may hold the pipes open for good.
const DRAIN: Duration = Duration::from_secs(2);
/// How often a reader looks at its stop flag while nothing arrives.
const POLL_MS: i32 = 100;

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

/// A thread reading one output stream of the command until end of file, or until told to
/// stop; it drops its end of the pipe when it returns.
struct Pump {
    thread: JoinHandle<String>,
    stop: Arc<AtomicBool>,
}

impl Pump {
    fn spawn(stream: impl Read + AsRawFd + Send + 'static, name: &'static str) -> Pump {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || read_lines(stream, name, &flag));
        Pump { thread, stop }
    }

    /// Waits until `deadline` for end of file, then stops reading. True when the stream
    /// ended by itself.
    fn finish(self, deadline: Instant) -> (String, bool) {
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ended = self.thread.is_finished();
        self.stop.store(true, Ordering::Release);
        // Returns within one poll interval of the flag.
        (self.thread.join().unwrap_or_default(), ended)
    }
}

/// Logs each line of `stream` and keeps the tail. Polls, so that `stop` is seen even while
/// a process outside the group keeps the pipe open without writing.
fn read_lines(mut stream: impl Read + AsRawFd, name: &str, stop: &AtomicBool) -> String {
    let mut kept = String::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    let emit = |line: &mut Vec<u8>, kept: &mut String| {
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "paglets::build", stream = name, "{text}");
        kept.push_str(&text);
        kept.push('\n');
        tail(kept);
        line.clear();
    };
    loop {
        let mut poll = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, POLL_MS) };
        if ready == 0 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            continue;
        }
        if ready < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // Readable, hung up or failed: a read tells which, and does not block now.
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for &byte in &buf[..n] {
                    if byte == b'\n' {
                        emit(&mut line, &mut kept);
                    } else {
                        line.push(byte);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut kept);
    }
    kept
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
    let out = child.stdout.take().map(|s| Pump::spawn(s, "stdout"));
    let err = child.stderr.take().map(|s| Pump::spawn(s, "stderr"));
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
    let deadline = Instant::now() + DRAIN;
    let (stdout, out_ended) = out.map_or((String::new(), true), |p| p.finish(deadline));
    let (stderr, err_ended) = err.map_or((String::new(), true), |p| p.finish(deadline));
    if !(out_ended && err_ended) {
        tracing::warn!(
            "{what} ended, but a process outside its group still holds its output open (a daemon started with setsid?); stopped reading after {DRAIN:?}"
        );
    }
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

#[cfg(test)]
mod daemon_tests {
    use std::time::Duration;

    #[test]
    fn a_daemon_holding_the_output_does_not_hang_the_build() {
        let dir = std::env::temp_dir().join(format!("paglets-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let pidfile = dir.join("daemon.pid");
        // `setsid` leaves the build's process group, so the group kill misses it, and it keeps
        // stdout and stderr open for ten minutes.
        let command = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 600' & echo built",
            pidfile.display()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.clone();
        std::thread::spawn(move || {
            let _ = tx.send(super::run(&command, &root, Duration::from_secs(60)));
        });
        let outcome = rx.recv_timeout(Duration::from_secs(30));
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: `kill` on the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&dir);
        let outcome = outcome.expect("the build returned while the daemon holds its output");
        assert!(outcome.ok && outcome.stdout == "built\n", "{outcome:?}");
    }
}
