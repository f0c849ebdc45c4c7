//! What travels in the body of `POST /mesh/swim`: one version byte, one kind byte, then a
//! foca packet or a leave notice. Every decode is bounded by the body limit and checks the
//! identities it finds.

use foca::{Codec, Header, Member, PostcardCodec};

use super::identity::HostId;

/// The wire version this host speaks. A packet of another version is dropped and logged.
pub const WIRE_VERSION: u8 = 1;
/// Largest `POST /mesh/swim` body.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest foca packet: the body bound less the two header bytes.
pub const MAX_PACKET: usize = MAX_BODY - 2;

const KIND_SWIM: u8 = 0;
const KIND_LEAVE: u8 = 1;

/// One decoded body.
#[derive(Debug)]
pub enum Packet {
    /// A foca packet, its header already checked; handed to the membership task as is.
    Swim(Vec<u8>),
    /// The sender stops gracefully: list it as `left`.
    Leave(HostId),
}

/// Why a body was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Fewer than the two header bytes.
    #[error("a membership packet needs at least 2 bytes")]
    Short,
    /// Another wire version.
    #[error("membership wire version {0} is not spoken here (this host speaks {WIRE_VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown membership packet kind {0}")]
    Kind(u8),
    /// The payload does not decode.
    #[error("malformed membership packet: {0}")]
    Malformed(String),
}

/// Frames a foca packet.
pub fn swim(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(&[WIRE_VERSION, KIND_SWIM]);
    out.extend_from_slice(data);
    out
}

/// Frames a leave notice for `id`.
pub fn leave(id: &HostId) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION, KIND_LEAVE];
    // Serialising a struct of two strings and an integer into a Vec cannot fail.
    out.extend(postcard::to_allocvec(id).unwrap_or_default());
    out
}

/// Checks a body and splits off its header. A foca packet's own header is decoded here (so
/// garbage gets a 400 at once); its member updates are decoded by the task, through
/// [`MeshCodec`], which checks each identity.
pub fn decode(body: &[u8]) -> Result<Packet, WireError> {
    let [version, kind, payload @ ..] = body else {
        return Err(WireError::Short);
    };
    if *version != WIRE_VERSION {
        return Err(WireError::Version(*version));
    }
    match *kind {
        KIND_SWIM => {
            if payload.len() > MAX_PACKET {
                return Err(WireError::Malformed("packet too large".into()));
            }
            MeshCodec
                .decode_header(payload)
                .map_err(|e| WireError::Malformed(e.to_string()))?;
            Ok(Packet::Swim(payload.to_vec()))
        }
        KIND_LEAVE => {
            let id: HostId =
                postcard::from_bytes(payload).map_err(|e| WireError::Malformed(e.to_string()))?;
            if !id.is_valid() {
                return Err(WireError::Malformed("invalid identity".into()));
            }
            Ok(Packet::Leave(id))
        }
        other => Err(WireError::Kind(other)),
    }
}

/// foca's postcard codec, refusing any identity that is not a valid host name and URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshCodec;

/// Why a packet did not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// postcard refused the bytes.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    /// An identity with a bad name or URL.
    #[error("invalid host identity in a membership packet")]
    Identity,
}

impl Codec<HostId> for MeshCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<HostId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<Header<HostId>, CodecError> {
        let header: Header<HostId> = PostcardCodec.decode_header(buf)?;
        if !header.src.is_valid() || !header.dst.is_valid() {
            return Err(CodecError::Identity);
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<HostId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<Member<HostId>, CodecError> {
        let member: Member<HostId> = PostcardCodec.decode_member(buf)?;
        if !member.id().is_valid() {
            return Err(CodecError::Identity);
        }
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_other_versions_are_refused() {
        assert!(matches!(decode(b""), Err(WireError::Short)));
        assert!(matches!(decode(&[9, 0, 1]), Err(WireError::Version(9))));
        assert!(matches!(
            decode(&[WIRE_VERSION, 7]),
            Err(WireError::Kind(7))
        ));
        let garbage = [WIRE_VERSION, KIND_SWIM, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(decode(&garbage), Err(WireError::Malformed(_))));
    }

    #[test]
    fn a_leave_notice_round_trips() {
        let id = HostId {
            name: "a".into(),
            url: "http://127.0.0.1:1".into(),
            generation: 3,
        };
        match decode(&leave(&id)) {
            Ok(Packet::Leave(back)) => assert_eq!(back, id),
            other => panic!("{other:?}"),
        }
    }
}
