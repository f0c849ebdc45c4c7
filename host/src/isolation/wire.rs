//! The worker protocol: frames over the Unix socket between a host and one of its workers.
//!
//! A frame is a little-endian `u32` length and that many bytes of JSON ([`Frame`]). Either
//! side asks with a sequence number and the other answers with the same number; the host's
//! numbers and the worker's are separate (a [`Frame::Call`] is answered by a
//! [`Frame::Answer`], a [`Frame::Back`] by a [`Frame::BackAnswer`]), so both can ask at once.

use std::io::{Read, Write};
use std::path::PathBuf;

use plugin_api::{Arrival, Hook, PagletError};
use serde::{Deserialize, Serialize};

/// The largest frame either side accepts (a message's arguments and a state travel whole).
pub const MAX_FRAME: usize = 1 << 30;

/// One frame.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// The host asks the worker.
    Call { seq: u64, call: Call },
    /// The worker answers a [`Frame::Call`].
    Answer {
        seq: u64,
        result: Result<Done, WireError>,
    },
    /// A paglet in the worker asks the host through its context.
    Back {
        seq: u64,
        from: String,
        class: String,
        back: Back,
    },
    /// The host answers a [`Frame::Back`].
    BackAnswer {
        seq: u64,
        result: Result<String, WireError>,
    },
}

/// What the host asks of a worker. Instances live in numbered slots.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// A new instance of `class` from `library` (the host's private copy): from a partial
    /// `state` (JSON text, `None` for the default) when `version` is `None`, else restored
    /// from a stored state written by code with that state version. Runs no hook.
    Create {
        library: PathBuf,
        class: String,
        state: Option<String>,
        version: Option<u32>,
        id: String,
        host_name: String,
    },
    /// A message to the instance in `slot`.
    Handle {
        slot: u64,
        kind: String,
        args: String,
    },
    /// A lifecycle hook.
    Hook { slot: u64, hook: WireHook },
    /// The instance's state as JSON text.
    State { slot: u64 },
    /// The instance moved to `library`'s code (a reload): a new slot, the old one untouched.
    Migrate {
        slot: u64,
        library: PathBuf,
        id: String,
        host_name: String,
    },
    /// Forget the instance in `slot` (not answered).
    Drop { slot: u64 },
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Done {
    /// A hook ran.
    Unit,
    /// A reply or a state, as JSON text.
    Text(String),
    /// A new instance: its slot and the state version of its code.
    Instance { slot: u64, state_version: u32 },
}

/// What a paglet's context asks of the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum Back {
    /// `ctx.send`.
    Send {
        to: String,
        kind: String,
        args: String,
    },
    /// `ctx.create`.
    Create {
        class: String,
        state: String,
        id: Option<String>,
    },
    /// `ctx.send_oneway`.
    Oneway {
        to: String,
        kind: String,
        args: String,
    },
    /// A lifecycle operation on itself.
    Request { op: String, args: String },
    /// A log line (not answered).
    Log {
        level: u8,
        target: String,
        message: String,
    },
}

/// A [`Hook`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireHook {
    Created,
    Arrived(Arrival),
    Dispatching { to: String },
    Cloning,
    Deactivating,
    Activated,
    Disposing,
}

impl From<Hook> for WireHook {
    fn from(hook: Hook) -> Self {
        match hook {
            Hook::Created => WireHook::Created,
            Hook::Arrived(arrival) => WireHook::Arrived(arrival),
            Hook::Dispatching { to } => WireHook::Dispatching { to },
            Hook::Cloning => WireHook::Cloning,
            Hook::Deactivating => WireHook::Deactivating,
            Hook::Activated => WireHook::Activated,
            Hook::Disposing => WireHook::Disposing,
        }
    }
}

impl From<WireHook> for Hook {
    fn from(hook: WireHook) -> Self {
        match hook {
            WireHook::Created => Hook::Created,
            WireHook::Arrived(arrival) => Hook::Arrived(arrival),
            WireHook::Dispatching { to } => Hook::Dispatching { to },
            WireHook::Cloning => Hook::Cloning,
            WireHook::Deactivating => Hook::Deactivating,
            WireHook::Activated => Hook::Activated,
            WireHook::Disposing => Hook::Disposing,
        }
    }
}

/// A [`PagletError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    NotHandled(String),
    InvalidArgs(String),
    Failed(String),
    Panicked(String),
    NotFound(String),
    Deadlock(String),
    DropsKeys(Vec<String>),
}

impl From<PagletError> for WireError {
    fn from(e: PagletError) -> Self {
        match e {
            PagletError::NotHandled { kind } => WireError::NotHandled(kind),
            PagletError::InvalidArgs(m) => WireError::InvalidArgs(m),
            PagletError::Failed(m) => WireError::Failed(m),
            PagletError::Panicked(m) => WireError::Panicked(m),
            PagletError::NotFound(m) => WireError::NotFound(m),
            PagletError::Deadlock(m) => WireError::Deadlock(m),
            PagletError::DropsKeys { keys } => WireError::DropsKeys(keys),
            other => WireError::Failed(other.to_string()),
        }
    }
}

impl From<WireError> for PagletError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotHandled(kind) => PagletError::NotHandled { kind },
            WireError::InvalidArgs(m) => PagletError::InvalidArgs(m),
            WireError::Failed(m) => PagletError::Failed(m),
            WireError::Panicked(m) => PagletError::Panicked(m),
            WireError::NotFound(m) => PagletError::NotFound(m),
            WireError::Deadlock(m) => PagletError::Deadlock(m),
            WireError::DropsKeys(keys) => PagletError::DropsKeys { keys },
        }
    }
}

/// Writes one frame in a single `write` where the frame allows it.
pub fn write_frame(mut to: impl Write, frame: &Frame) -> std::io::Result<()> {
    let mut bytes = vec![0u8; 4];
    serde_json::to_writer(&mut bytes, frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(bytes.len() - 4)
        .ok()
        .filter(|&n| n as usize <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("frame too large"))?;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    to.write_all(&bytes)
}

/// Reads one frame; end of file (the other side is gone) is `UnexpectedEof`.
pub fn read_frame(mut from: impl Read) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut bytes = vec![0u8; len];
    from.read_exact(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_frame_is_an_error() {
        let frame = Frame::Call {
            seq: 7,
            call: Call::Handle {
                slot: 3,
                kind: "increment".into(),
                args: "{\"by\": 2}".into(),
            },
        };
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &frame).expect("write");
        let back = read_frame(&bytes[..]).expect("read");
        assert!(
            matches!(back, Frame::Call { seq: 7, call: Call::Handle { slot: 3, ref args, .. } } if args == "{\"by\": 2}"),
            "{back:?}"
        );
        let cut = read_frame(&bytes[..bytes.len() - 1]).expect_err("cut");
        assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn paglet_errors_cross_unchanged() {
        for e in [
            PagletError::NotHandled { kind: "fly".into() },
            PagletError::DropsKeys {
                keys: vec!["a.b".into()],
            },
            PagletError::Panicked("boom".into()),
        ] {
            assert_eq!(PagletError::from(WireError::from(e.clone())), e);
        }
    }
}
