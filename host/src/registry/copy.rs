//! Private copies of library files, and their content hashes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The prefix of a copy being written.
const TMP_PREFIX: &str = ".copy-";

/// True for the names [`private_copy`] gives: `.copy-<pid>-<n>` while writing, then
/// `<stem>-<16 hex digits><DLL_SUFFIX>`.
fn is_copy_name(name: &str) -> bool {
    if let Some(rest) = name.strip_prefix(TMP_PREFIX) {
        return rest
            .split_once('-')
            .is_some_and(|(pid, n)| all_digits(pid) && all_digits(n));
    }
    let Some(stem) = name.strip_suffix(std::env::consts::DLL_SUFFIX) else {
        return false;
    };
    match stem.rsplit_once('-') {
        Some((head, sha)) => {
            !head.is_empty()
                && sha.len() == 16
                && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        None => false,
    }
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Deletes the copies an earlier run left in `dir`: regular files with a copy's name only.
/// Anything else (another host's files, folders, symbolic links) stays, and a `dir` that is
/// itself a symbolic link is refused: pruning never reaches outside the host's own folder.
pub(super) fn prune(dir: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(dir)?.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link; the private copies need a folder of their own",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // `file_type` does not follow symbolic links.
        let ours =
            entry.file_type()?.is_file() && is_copy_name(&entry.file_name().to_string_lossy());
        if ours {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Copies `src` into `dir` under a temporary name, hashes the copy (the source may change
/// meanwhile) and renames it to its content address. A real copy, never a hard link: glibc
/// would hand back an old handle for another path to the same inode.
pub(super) fn private_copy(src: &Path, dir: &Path) -> std::io::Result<(PathBuf, String)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::copy(src, &tmp)?;
    let sha = sha256_file(&tmp)?;
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir.join(format!(
        "{stem}-{}{}",
        &sha[..16],
        std::env::consts::DLL_SUFFIX
    ));
    if dest.exists() {
        std::fs::remove_file(&tmp)?;
    } else {
        std::fs::rename(&tmp, &dest)?;
    }
    Ok((dest, sha))
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn copy_names_are_recognised() {
        for name in [
            ".copy-12-0",
            "libcounter-0123456789abcdef.so",
            "a-b-ffffffffffffffff.so",
        ] {
            assert!(super::is_copy_name(name), "{name}");
        }
        for name in [
            "paglets.json",
            "libcounter.so",
            "-0123456789abcdef.so",
            "libcounter-0123456789ABCDEF.so",
            "libcounter-0123456789abcde.so",
            ".copy-x-1",
            ".copy-1",
        ] {
            assert!(!super::is_copy_name(name), "{name}");
        }
    }

    #[test]
    fn pruning_removes_only_our_copies_and_never_follows_links() {
        let base = std::env::temp_dir().join(format!("paglets-prune-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("mkdir");
        let outside = base.join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let precious = outside.join("libx-0123456789abcdef.so");
        std::fs::write(&precious, b"not ours").expect("write");
        let dir = base.join("libs");
        std::fs::create_dir(&dir).expect("mkdir");
        let write = |name: &str| std::fs::write(dir.join(name), b"x").expect("write");
        write("libcounter-0123456789abcdef.so");
        write(".copy-7-3");
        write("paglets.json");
        std::os::unix::fs::symlink(&precious, dir.join("liby-0123456789abcdef.so")).expect("link");
        std::os::unix::fs::symlink(&outside, dir.join("sub-0123456789abcdef.so")).expect("link");
        super::prune(&dir).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "liby-0123456789abcdef.so",
                "paglets.json",
                "sub-0123456789abcdef.so"
            ]
        );
        assert!(precious.is_file());
        // A copies folder that is a link elsewhere is refused, and the far side is untouched.
        let linked = base.join("linked");
        std::os::unix::fs::symlink(&outside, &linked).expect("link");
        let err = super::prune(&linked).expect_err("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(Path::new(&precious).is_file());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
