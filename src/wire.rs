//! Framing: how one serialized message travels over a byte stream.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of postcard. postcard
//! only ever builds plain data from bytes: decoding never runs code, unlike Python's pickle.
//! Every decode of bytes from another process goes through [`from_bytes`] or
//! [`decode_payload`], which bound the nesting depth ([`MAX_DECODE_DEPTH`]).

use std::cell::Cell;

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::error::{DecodeError, EncodeError, Error, ErrorKind, Result};

mod depth;
mod ser;
pub(crate) mod share;

/// How deeply a received value may be nested: a message whose value goes further down
/// (counting one level for each sequence, tuple, struct, map, enum variant, `Some` and newtype
/// on the way) fails to decode with a [`DecodeError`] instead of overflowing the receiver's
/// stack. Flat data of any size is unaffected; a linked list of `Option<Box<Node>>` costs two
/// levels per node.
///
/// Decoding recurses once per level, so without a bound a few hundred kilobytes of hostile or
/// buggy bytes could abort the process that receives them (through
/// [`Connection::recv`](crate::Connection::recv), [`Queue::get`](crate::Queue::get), a child's
/// result, or a [`Listener`](crate::connection::Listener) peer), and a bad queue item would abort each
/// consumer in turn. A level takes about 100 to 200 bytes of stack in an optimised build and
/// about 1.5 KiB in a debug build, so a value at the limit decodes in a thread with Rust's
/// default 2 MiB stack either way. Besides, decoding stops with the same error when less than
/// 64 KiB of the receiving thread's stack is left, so a thread with a smaller stack gets the
/// error at a shallower depth rather than an overflow.
pub const MAX_DECODE_DEPTH: usize = 1024;

/// Why [`take_bounded`] failed.
enum Failure {
    TooDeep(depth::Limit),
    Postcard(postcard::Error),
    /// A handle's descriptor could not be fetched from its sender ([`share`]).
    Handle(String, postcard::Error),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::TooDeep(depth::Limit::Depth) => format!(
                "message value is nested more than {MAX_DECODE_DEPTH} levels deep \
                 (multiproc::connection::MAX_DECODE_DEPTH)"
            ),
            Failure::TooDeep(depth::Limit::Stack) => format!(
                "message value is nested too deeply for this thread's stack (decoding stops \
                 with {} KiB left)",
                depth::STACK_RESERVE / 1024
            ),
            Failure::Postcard(_) => {
                "message bytes are not a valid value of the expected type".to_owned()
            }
            Failure::Handle(why, _) => why.clone(),
        }
    }

    fn into_source(self) -> Option<Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Failure::TooDeep(_) => None,
            Failure::Postcard(e) | Failure::Handle(_, e) => Some(Box::new(e)),
        }
    }
}

/// Decodes a `T` from the start of `bytes` with the nesting bound; returns it and the rest.
#[inline]
fn take_bounded<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> std::result::Result<(T, &'a [u8]), Failure> {
    let hit = Cell::new(None);
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let bounded = depth::Bounded {
        inner: &mut de,
        depth: depth::Depth::new(MAX_DECODE_DEPTH, &hit),
    };
    match T::deserialize(bounded) {
        Ok(value) => Ok((value, de.finalize().map_err(Failure::Postcard)?)),
        Err(e) => Err(match hit.get() {
            Some(limit) => Failure::TooDeep(limit),
            None => match share::take_failure() {
                Some(why) => Failure::Handle(why, e),
                None => Failure::Postcard(e),
            },
        }),
    }
}

/// Decodes bytes that came from another process (start arguments, a child's result, a pool
/// task or reply) with the nesting bound; trailing bytes are ignored, as postcard's
/// `from_bytes` does. Errors are [`ErrorKind::Decode`].
pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match take_bounded(bytes) {
        Ok((value, _)) => Ok(value),
        Err(f) => Err(match f {
            Failure::Postcard(e) => Error::with_source(ErrorKind::Decode, e),
            Failure::Handle(why, e) => Error::with_message_and_source(ErrorKind::Decode, why, e),
            f @ Failure::TooDeep(_) => Error::with_message(ErrorKind::Decode, f.describe()),
        }),
    }
}

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 4;

/// The largest frame accepted; a header claiming more is an error, not an allocation.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// Serializes `value` into one frame.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let out = vec![0u8; HEADER];
    let mut out = match ser::serialize(value, Bounded::new(out, HEADER + MAX_FRAME)) {
        Ok(out) => out,
        Err(postcard::Error::SerializeBufferFull) => {
            return Err(Error::with_message(ErrorKind::Encode, over_the_limit()));
        }
        Err(e) => return Err(Error::with_source(ErrorKind::Encode, e)),
    };
    let len = out.len() - HEADER;
    out[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Serializes `value` as a payload (no header) that fits in one frame, refusing a larger one
/// as soon as it crosses the limit.
pub(crate) fn encode_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    match ser::serialize(value, Bounded::new(Vec::new(), MAX_FRAME)) {
        Ok(out) => Ok(out),
        Err(postcard::Error::SerializeBufferFull) => {
            Err(Error::with_message(ErrorKind::Encode, over_the_limit()))
        }
        Err(e) => Err(Error::with_source(ErrorKind::Encode, e)),
    }
}

/// The number of bytes `value` serializes to (postcard's `serialized_size`, with byte
/// sequences counted in one go).
pub(crate) fn serialized_size<T: Serialize + ?Sized>(value: &T) -> postcard::Result<usize> {
    ser::serialize(value, ser::Size::default())
}

/// Serializes `value` into the start of `buf` (postcard's `to_slice`, with byte sequences
/// copied in one go); returns the number of bytes written.
pub(crate) fn encode_to_slice<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> postcard::Result<usize> {
    ser::serialize(value, ser::Slice::new(buf))
}

/// A `Vec` that refuses to grow past one frame, so that a value too large to send fails as
/// soon as it crosses the limit, before its bytes are copied (a 1 GiB result used to be
/// copied whole, with the `Vec`'s regrowths, only to be refused).
struct Bounded {
    out: Vec<u8>,
    limit: usize,
}

impl Bounded {
    fn new(out: Vec<u8>, limit: usize) -> Self {
        Bounded { out, limit }
    }
}

impl postcard::ser_flavors::Flavor for Bounded {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.limit - self.out.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.out.len() >= self.limit {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.out.push(byte);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.out)
    }
}

impl ser::Out for Bounded {
    fn extend_bytes(
        &mut self,
        len: usize,
        bytes: impl Iterator<Item = postcard::Result<u8>>,
    ) -> postcard::Result<()> {
        if len > self.limit - self.out.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        let start = self.out.len();
        let mut failed = None;
        self.out.extend(bytes.take(len).map(|b| {
            b.unwrap_or_else(|e| {
                failed.get_or_insert(e);
                0
            })
        }));
        if let Some(e) = failed {
            return Err(e);
        }
        if self.out.len() - start != len {
            // An iterator that yielded fewer items than its exact size hint announced.
            return Err(postcard::Error::SerializeSeqLengthUnknown);
        }
        Ok(())
    }
}

fn over_the_limit() -> String {
    format!("message exceeds the {MAX_FRAME}-byte limit")
}

/// If `buf` starts with a whole frame, decodes it and returns the value and the bytes used.
pub(crate) fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let value = from_bytes(&buf[HEADER..HEADER + len])?;
    Ok(Some((value, HEADER + len)))
}

/// The payload length announced by a frame header, once the header is complete.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header.try_into().expect("slice of HEADER bytes")) as usize;
    if len > MAX_FRAME {
        return Err(Error::with_message(
            ErrorKind::Decode,
            format!("frame header announces {len} bytes, over the {MAX_FRAME}-byte limit"),
        ));
    }
    Ok(Some(len))
}

/// Appends one frame holding `value` to `out` (header and postcard payload), reusing `out`'s
/// allocation. On error `out` is emptied.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> std::result::Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    let buf = std::mem::take(out);
    let limit = start + HEADER + MAX_FRAME;
    *out = match ser::serialize(value, Bounded::new(buf, limit)) {
        Ok(buf) => buf,
        Err(postcard::Error::SerializeBufferFull) => {
            return Err(EncodeError::new(over_the_limit(), None));
        }
        Err(e) => {
            return Err(EncodeError::new(
                share::take_failure().unwrap_or_else(|| "could not serialize the message".into()),
                Some(Box::new(e)),
            ));
        }
    };
    let len = out.len() - start - HEADER;
    if let Err(e) = check_len(len) {
        out.truncate(start);
        return Err(e);
    }
    out[start..start + HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// The header for a payload of `len` bytes, or an error if it exceeds [`MAX_FRAME`].
pub(crate) fn header_for(len: usize) -> std::result::Result<[u8; HEADER], EncodeError> {
    check_len(len)?;
    Ok((len as u32).to_le_bytes())
}

fn check_len(len: usize) -> std::result::Result<(), EncodeError> {
    if len > MAX_FRAME {
        return Err(EncodeError::new(
            format!("message of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
            None,
        ));
    }
    Ok(())
}

/// Decodes one whole payload (without header); trailing bytes are an error.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, DecodeError> {
    match take_bounded::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(DecodeError::new(
            format!(
                "message has {} bytes left over after the value: wrong type?",
                rest.len()
            ),
            None,
        )),
        Err(f) => Err(DecodeError::new(f.describe(), f.into_source())),
    }
}

/// `#[serde(with = "crate::wire::bytes")]` for a `Vec<u8>` field that may be large (an encoded
/// value inside a message): it is written as one byte string, which postcard encodes exactly
/// as a sequence of `u8` (a length, then the bytes), but copied in one go instead of one call
/// per byte.
pub(crate) mod bytes {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBuf)
    }

    struct ByteBuf;

    impl<'de> serde::de::Visitor<'de> for ByteBuf {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// The payload length announced by a header, checked against [`MAX_FRAME`].
pub(crate) fn announced_len(header: [u8; HEADER]) -> std::result::Result<usize, DecodeError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::new(
            format!("frame header announces {len} bytes, over the {MAX_FRAME}-byte limit"),
            None,
        ));
    }
    Ok(len)
}

// ---------------------------------------------------------------------------------------------
// The descriptor side channel (used by the spawn and forkserver start methods).
//
// Handles that own a file descriptor (a Connection, a Queue's pipes, a shared-memory segment)
// can be passed to a child as start arguments. Under `fork` arguments are moved, not
// serialized, and the child inherits the descriptors. Under start methods that begin a fresh
// program, the arguments are serialized inside `collect_fds`: each descriptor is recorded in a
// side table and only its index goes into the bytes; the start method passes the table's
// descriptors to the child (SCM_RIGHTS or inheritance), and the child decodes the arguments
// inside `with_received_fds`, where each index is swapped back for its descriptor.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

/// The side table of one [`collect_fds`] call.
#[derive(Default)]
struct Outgoing {
    fds: Vec<OwnedFd>,
    /// The first failure to duplicate a descriptor (out of descriptors), which serde can only
    /// carry as text: kept here so that it is reported as the OS error it is.
    dup_failed: Option<std::io::Error>,
}

thread_local! {
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `encode` (which serializes start arguments) and returns duplicates of the descriptors
/// that the serialized handles refer to, in index order. Being duplicates, they stay valid
/// whatever happens to the handles; dropping them closes only the copies. A failure to
/// duplicate shows only as `encode`'s serialization error: prefer [`collect_fds_checked`].
pub(crate) fn collect_fds<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let (result, table) = collect(encode);
    (result, table.fds)
}

/// As [`collect_fds`], for an `encode` that reports errors: if duplicating a descriptor failed
/// (`EMFILE`, `ENFILE`), the error is [`ErrorKind::Io`] with that `io::Error` as its source,
/// not the serialization error it surfaced as inside serde.
pub(crate) fn collect_fds_checked<R>(
    encode: impl FnOnce() -> Result<R>,
) -> Result<(R, Vec<OwnedFd>)> {
    let (result, table) = collect(encode);
    if let Some(e) = table.dup_failed {
        return Err(Error::with_message_and_source(
            ErrorKind::Io,
            format!("could not duplicate a descriptor to pass to the child: {e}"),
            e,
        ));
    }
    Ok((result?, table.fds))
}

fn collect<R>(encode: impl FnOnce() -> R) -> (R, Outgoing) {
    let previous = OUTGOING.replace(Some(Outgoing::default()));
    let result = encode();
    let table = OUTGOING.replace(previous).unwrap_or_default();
    (result, table)
}

/// Runs `decode` (which deserializes start arguments) with `fds` as the table that serialized
/// indexes refer to. Descriptors nobody claimed are closed afterwards.
pub(crate) fn with_received_fds<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    let previous = INCOMING.replace(Some(fds.into_iter().map(Some).collect()));
    let result = decode();
    INCOMING.set(previous);
    result
}

/// Serializes a descriptor as an index into the side table.
///
/// # Errors
/// Outside [`collect_fds`]: the handle is being sent somewhere descriptors cannot follow
/// (over a queue, into a file), which this crate does not support; or the descriptor could not
/// be duplicated (out of descriptors).
pub(crate) fn serialize_fd<S: serde::Serializer>(
    fd: BorrowedFd<'_>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with_borrow_mut(|table| {
        table.as_mut().map(|table| match fd.try_clone_to_owned() {
            Ok(copy) => {
                table.fds.push(copy);
                Ok(table.fds.len() - 1)
            }
            Err(e) => {
                let message = format!("could not duplicate a descriptor for the child: {e}");
                table.dup_failed.get_or_insert(e);
                Err(message)
            }
        })
    });
    match index {
        Some(Ok(i)) => s.serialize_u32(i as u32),
        Some(Err(message)) => Err(serde::ser::Error::custom(message)),
        None => Err(serde::ser::Error::custom(
            "a handle that owns a file descriptor can only be passed to a child process as a start argument",
        )),
    }
}

/// Deserializes a descriptor serialized by [`serialize_fd`], taking it out of the side table.
pub(crate) fn deserialize_fd<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = <u32 as serde::Deserialize>::deserialize(d)? as usize;
    INCOMING
        .with_borrow_mut(|table| table.as_mut().and_then(|fds| fds.get_mut(index)?.take()))
        .ok_or_else(|| {
            // Kept for the codec too: postcard drops a custom error's text.
            serde::de::Error::custom(share::failed(format!(
                "descriptor {index} missing from the start arguments"
            )))
        })
}

/// A borrowed descriptor that serializes through the side channel ([`serialize_fd`]).
pub(crate) struct SerFd<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for SerFd<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, s)
    }
}

/// A descriptor that deserializes through the side channel ([`deserialize_fd`]).
pub(crate) struct DeFd(pub(crate) OwnedFd);

impl<'de> serde::Deserialize<'de> for DeFd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_fd(d).map(DeFd)
    }
}
