//! Which files in which folders are candidate libraries, and why a folder or file is refused
//! before anything is loaded.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The candidate library files of `dir`: not hidden, with the platform's library suffix,
/// sorted by name. Not recursive.
pub fn candidates(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(std::env::consts::DLL_SUFFIX) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Refuses a folder or file that other users can write to: whoever can write there can run
/// code in the host. Files owned by another user than us or root count too.
pub fn check_secure(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.mode() & 0o002 != 0 {
        return Err(format!(
            "{} is writable by every user; refusing to load code from it (--allow-insecure-paths overrides)",
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
        std::fs::create_dir_all(dir.join("sub.so")).expect("mkdir");
        for name in ["libb.so", "liba.so", ".hidden.so", "notes.txt"] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let found: Vec<String> = super::candidates(&dir)
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(found, ["liba.so", "libb.so"]);
        let file = dir.join("liba.so");
        assert_eq!(super::check_secure(&file), Ok(()));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let err = super::check_secure(&file).expect_err("world-writable is refused");
        assert!(err.contains("writable by every user"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
