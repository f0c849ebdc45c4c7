//! Private copies of library files, and their content hashes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
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

/// Opens a candidate library for reading without ever blocking (a FIFO swapped in after the
/// listing would block a plain `open`), and checks what can be checked before copying: a
/// regular file, at most `max_size` bytes, starting like an ELF file.
pub(super) fn open_candidate(path: &Path, max_size: u64) -> Result<File, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max_size {
        return Err(format!(
            "{} bytes, more than the --max-library-size of {max_size} bytes",
            meta.len()
        ));
    }
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
    }
    if got == 0 {
        return Err("the file is empty".into());
    }
    if magic[..got] != ELF_MAGIC[..got] || got < ELF_MAGIC.len() {
        return Err("not an ELF file".into());
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(file)
}

/// The first bytes of every ELF file.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Copies `source` (the opened file `src`) into `dir` under a temporary name, hashes the copy
/// (the source may change meanwhile) and renames it to its content address. A real copy,
/// never a hard link: glibc would hand back an old handle for another path to the same
/// inode. A source that grows past `max_size` while being copied is refused, and its partial
/// copy deleted.
pub(super) fn private_copy(
    source: File,
    src: &Path,
    dir: &Path,
    max_size: u64,
) -> Result<(PathBuf, String), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let copied = write_copy(source, &tmp, max_size);
    let sha = match copied {
        Ok(sha) => sha,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let stem = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = dir.join(format!(
        "{stem}-{}{}",
        &sha[..16],
        std::env::consts::DLL_SUFFIX
    ));
    let placed = if dest.exists() {
        std::fs::remove_file(&tmp)
    } else {
        std::fs::rename(&tmp, &dest)
    };
    placed.map_err(|e| format!("private copy {}: {e}", dest.display()))?;
    Ok((dest, sha))
}

/// Writes at most `max_size` bytes of `source` to `tmp` and returns the copy's sha256.
fn write_copy(source: File, tmp: &Path, max_size: u64) -> Result<String, String> {
    let mut out = File::create(tmp).map_err(|e| format!("private copy {}: {e}", tmp.display()))?;
    let copied = std::io::copy(&mut source.take(max_size + 1), &mut out)
        .map_err(|e| format!("copying it to {}: {e}", tmp.display()))?;
    if copied > max_size {
        return Err(format!(
            "grew past the --max-library-size of {max_size} bytes while being copied"
        ));
    }
    drop(out);
    sha256_file(tmp).map_err(|e| format!("hashing the copy {}: {e}", tmp.display()))
}

/// SHA-256 of a file, as lowercase hex.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(File::open(path)?)
}

/// SHA-256 of everything `reader` yields, as lowercase hex.
pub(super) fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
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
    use std::io::Read;
    use std::path::Path;

    #[test]
    fn candidates_are_checked_before_copying_without_blocking() {
        let dir = std::env::temp_dir().join(format!("paglets-precheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let refused = |name: &str, max: u64| {
            super::open_candidate(&dir.join(name), max).expect_err("refused")
        };
        let fifo = dir.join("libfifo.so");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: `mkfifo` with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // A plain open of a FIFO without a writer would block here.
        assert_eq!(refused("libfifo.so", 1 << 20), "not a regular file");
        let big = std::fs::File::create(dir.join("libbig.so")).expect("create");
        big.set_len(3 << 30).expect("a sparse 3 GiB file");
        let err = refused("libbig.so", 1 << 20);
        assert!(
            err.contains("more than the --max-library-size of 1048576 bytes"),
            "{err}"
        );
        std::fs::write(dir.join("libjunk.so"), b"junk that is no library").expect("write");
        assert_eq!(refused("libjunk.so", 1 << 20), "not an ELF file");
        std::fs::write(dir.join("libempty.so"), b"").expect("write");
        assert_eq!(refused("libempty.so", 1 << 20), "the file is empty");
        std::fs::write(dir.join("libelf.so"), b"\x7fELF and the rest").expect("write");
        let mut file = super::open_candidate(&dir.join("libelf.so"), 1 << 20).expect("passes");
        let mut text = Vec::new();
        file.read_to_end(&mut text).expect("read");
        assert!(text.starts_with(b"\x7fELF"), "read from the start");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

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
