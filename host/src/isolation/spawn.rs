//! Starting a worker process and watching its memory: what only Linux has, in one place.

use std::os::unix::net::UnixStream;
use std::process::Child;

/// Starts `paglets worker LIBRARY` from this very executable (`/proc/self/exe`, which still
/// works after an update replaced the file) with one end of a new socketpair as its
/// descriptor 3, and returns it with the other end. In the child, before it runs anything:
/// it dies with this thread (`PR_SET_PDEATHSIG`), ignores SIGINT and SIGTERM, and dumps no
/// core. Call it from a thread that lives as long as the workers.
#[cfg(target_os = "linux")]
pub fn worker(library: &str) -> std::io::Result<(Child, UnixStream)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if made != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (host_end, child_end) = unsafe {
        (
            UnixStream::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let child_fd = child_end.as_raw_fd();
    let parent = std::process::id();
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg0("paglets")
        .arg("worker")
        .arg(library)
        .stdin(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl, getppid, signal, setrlimit)
    // on this child's own state, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if child_fd == 3 {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The host died before the line above took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the host is gone"));
            }
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(child_end);
    Ok((child, host_end))
}

#[cfg(not(target_os = "linux"))]
pub fn worker(_library: &str) -> std::io::Result<(Child, UnixStream)> {
    Err(std::io::Error::other(
        "worker processes are not supported on this platform",
    ))
}

/// The resident memory of process `pid` in bytes (`None` once it is gone).
#[cfg(target_os = "linux")]
pub fn resident(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(not(target_os = "linux"))]
pub fn resident(_pid: u32) -> Option<u64> {
    None
}

/// The name of signal `n` (`SIGSEGV`), or `signal n`.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {n}"),
    };
    name.into()
}
