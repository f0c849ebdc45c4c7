//! Which files in which folders are candidate libraries, and why a folder or file is refused
//! before anything is loaded.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The candidate library files of `dir`: regular files (or links to one), not hidden, with
/// the platform's library suffix, sorted by name. Not recursive. A FIFO, socket or device
/// named like a library is no candidate: opening one could block the scan.
pub fn candidates(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(std::env::consts::DLL_SUFFIX) {
            continue;
        }
        // `stat` never opens the file; a dangling link is skipped like a missing file.
        if !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Refuses a folder or file that other users can write to: whoever can write there can run
/// code in the host. Group- and world-writable ones count, and so do those owned by another
/// user than us or root.
pub fn check_secure(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let writers = if meta.mode() & 0o002 != 0 {
        Some("every user")
    } else if meta.mode() & 0o020 != 0 {
        Some("its group")
    } else {
        None
    };
    if let Some(writers) = writers {
        return Err(format!(
            "{} is writable by {writers}; refusing to load code from it (--allow-insecure-paths overrides)",
            path.display()
        ));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to another user (uid {}); refusing to load code from it (--allow-insecure-paths overrides)",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lists_library_files_only_sorted_and_not_hidden() {
        let dir = std::env::temp_dir().join(format!("paglets-discovery-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.so")).expect("mkdir");
        for name in ["libb.so", "liba.so", ".hidden.so", "notes.txt"] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let fifo =
            std::ffi::CString::new(dir.join("libfifo.so").into_os_string().into_encoded_bytes())
                .expect("no NUL");
        // SAFETY: `mkfifo` with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        std::os::unix::fs::symlink(dir.join("liba.so"), dir.join("liblink.so")).expect("link");
        std::os::unix::fs::symlink(dir.join("gone"), dir.join("libdangling.so")).expect("link");
        let found: Vec<String> = super::candidates(&dir)
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(found, ["liba.so", "libb.so", "liblink.so"]);
        let file = dir.join("liba.so");
        assert_eq!(super::check_secure(&file), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = super::check_secure(&file).expect_err("world-writable is refused");
        assert!(err.contains("writable by every user"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let err = super::check_secure(&file).expect_err("group-writable is refused");
        assert!(err.contains("writable by its group"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::chown(&file, Some(65534), None).expect("chown");
        let err = super::check_secure(&file).expect_err("a foreign owner is refused");
        assert!(err.contains("another user (uid 65534)"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
