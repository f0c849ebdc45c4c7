//! `paglets discover`: what a host would load from some folders, and every problem found.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context as _;

use super::{CommandResult, Exit, Failure};
use crate::cli::DiscoverArgs;
use crate::registry::{DiscoverReport, FileError, Registry};

/// The top-level entry point for `paglets discover`.
pub fn run(args: DiscoverArgs) -> CommandResult {
    for dir in &args.paths {
        if !dir.is_dir() {
            return Err(Failure::Usage(format!("{}: no such folder", dir.display())));
        }
    }
    // A library may print while it loads; keep stdout for our own output.
    let out = StdoutAside::new().context("redirect stdout while loading")?;
    // Discover loads files in place: it runs no host and writes no private copies. It
    // refuses what a host would refuse, insecure folders included.
    let registry = Registry::new(None, false)
        .context("set up the registry")?
        .quiet();
    let mut scan = registry.scan(&args.paths);
    if !args.allow_empty {
        scan.errors.extend(empty_folders(&args.paths, &scan.errors));
    }
    let report = DiscoverReport {
        libraries: registry
            .library_views()
            .into_iter()
            .filter(|l| l.is_loaded())
            .collect(),
        classes: registry.class_views(),
        errors: scan.errors,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("encode the report")? + "\n"
    } else {
        report.table()
    };
    out.finish(text.as_bytes()).context("write the report")?;
    Ok(if report.errors.is_empty() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

/// An error for each folder holding no candidate library (and not refused already): a CI
/// check over an empty folder would otherwise pass while checking nothing.
fn empty_folders(dirs: &[PathBuf], known: &[FileError]) -> Vec<FileError> {
    dirs.iter()
        .filter(|dir| !known.iter().any(|e| e.path == **dir))
        .filter(|dir| crate::discovery::candidates(dir).is_ok_and(|c| c.is_empty()))
        .map(|dir| FileError {
            path: dir.clone(),
            error: format!(
                "no paglet libraries in {} (no *{} files; --allow-empty accepts an empty folder)",
                dir.display(),
                std::env::consts::DLL_SUFFIX
            ),
            folder: true,
        })
        .collect()
}

/// Points fd 1 at stderr until `finish`, which writes to the real stdout.
struct StdoutAside {
    saved: OwnedFd,
}

impl StdoutAside {
    fn new() -> std::io::Result<Self> {
        std::io::stdout().flush()?;
        // SAFETY: plain descriptor calls on fds 1 and 2, which every process has; `dup`'s
        // result is checked before it is owned.
        unsafe {
            let saved = libc::dup(1);
            if saved < 0 || libc::dup2(2, 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(StdoutAside {
                saved: OwnedFd::from_raw_fd(saved),
            })
        }
    }

    fn finish(self, bytes: &[u8]) -> std::io::Result<()> {
        std::io::stdout().flush()?;
        let mut out = File::from(self.saved);
        match out.write_all(bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}
