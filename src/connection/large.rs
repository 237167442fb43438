//! Large messages out of band, on connections that are Unix sockets (issue 17).
//!
//! When a connection was told to (`Connection::set_out_of_band`), a message whose frame
//! would be that many bytes or more is not written down the socket. Its payload goes into a fresh memfd, which is then sealed (its size fixed, no
//! writes, no further seals: `sys::seal_contents`), and the socket carries a frame of
//! [`MIN_FRAME`](super::MIN_FRAME) bytes whose header is the payload's length with bit 31
//! ([`OOB_FLAG`]) set, the memfd attached to it with SCM_RIGHTS in the same `sendmsg`.
//! Bit 31 is free: no frame may announce more than `MAX_FRAME` (2^30) bytes.
//!
//! The receiver takes descriptors with every read of a Unix socket, checks that the one
//! attached to such a frame is a memfd sealed at exactly the announced length, and reads the
//! payload from it (maps it read-only and decodes in place for `recv`; one `pread` into the
//! caller's buffer for `recv_bytes*`). The kernel holds the memfd while it is in flight, so
//! the sender may exit right after sending: there is no liveness rule, unlike the descriptor
//! sharer that [`SharedSlice`](crate::shared::SharedSlice) uses.
//!
//! What it saves: through the socket a message is copied into the kernel's socket buffer by
//! the sender, out of it by the receiver, and (for `recv`) once more by the decode; out of
//! band the sender's bytes go once into the memfd's pages and the receiver reads them once.
//! Serialization goes straight into the memfd, through a small staging buffer: the bytes are
//! serialized once, and a message is measured only by serializing it (so a small message
//! costs exactly what it cost before).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;

use crate::error::{EncodeError, SendError};
use crate::sys;
use crate::wire::{self, HEADER, MAX_FRAME};

/// Bit 31 of a frame header: the payload is in the memfd attached to the frame.
pub(crate) const OOB_FLAG: u32 = 1 << 31;

/// Bytes serialized before they are written to the memfd: large enough that a `write(2)`
/// costs little per byte, small enough to stay in cache.
const STAGE: usize = 256 * 1024;

/// The name shown for the memfd in `/proc/<pid>/fd`.
const NAME: &std::ffi::CStr = c"multiproc-message";

/// A message as encoded by [`encode`].
pub(crate) enum Encoded {
    /// In `out`: a whole frame, header included, unpadded.
    Inline,
    /// In a sealed memfd holding exactly `len` bytes of payload.
    OutOfBand { file: OwnedFd, len: usize },
}

/// Serializes `value` into `out` as one frame (as `wire::encode_into` does), or, once its
/// frame reaches `from` bytes (at least `MIN_FRAME + 1`), into a memfd that is sealed when
/// serialization ends.
/// `out` is left empty in the second case, and on error.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    from: usize,
) -> Result<Encoded, SendError> {
    out.clear();
    out.extend_from_slice(&[0u8; HEADER]);
    let mut failure = None;
    let sink = Spill {
        out: std::mem::take(out),
        file: None,
        spilled: 0,
        fast_until: from - 1,
        from,
        failure: &mut failure,
    };
    let result = postcard::serialize_with_flavor(value, sink);
    if let Some(e) = failure {
        return Err(SendError::Io(e));
    }
    match result {
        Ok((buf, None, _)) => {
            *out = buf;
            let len = out.len() - HEADER;
            out[..HEADER].copy_from_slice(&wire::header_for(len)?);
            Ok(Encoded::Inline)
        }
        Ok((buf, Some(file), len)) => {
            *out = buf;
            out.clear();
            Ok(Encoded::OutOfBand { file, len })
        }
        Err(postcard::Error::SerializeBufferFull) => Err(EncodeError::new(
            format!("message exceeds the {MAX_FRAME}-byte limit"),
            None,
        )
        .into()),
        Err(e) => Err(EncodeError::new(
            wire::share::take_failure().unwrap_or_else(|| "could not serialize the message".into()),
            Some(Box::new(e)),
        )
        .into()),
    }
}

/// A memfd holding `bytes`, sealed: what `send_bytes` sends out of band.
pub(crate) fn file_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let file = sys::memfd_sealable(NAME)?;
    sys::write_all(file.as_fd(), bytes)?;
    sys::seal_contents(file.as_fd())?;
    Ok(file)
}

/// Sends the frame that announces `len` bytes out of band, with `file` attached.
pub(crate) fn send_frame(
    writer: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    len: usize,
) -> io::Result<()> {
    debug_assert!(len <= MAX_FRAME);
    let mut frame = [0u8; super::MIN_FRAME];
    frame[..HEADER].copy_from_slice(&(len as u32 | OOB_FLAG).to_le_bytes());
    sys::send_with_fds(writer, &frame, &[file])
}

/// The postcard sink of [`encode`]: a `Vec` while the frame is small, a memfd (written from
/// `out`, used as a staging buffer) once it is not.
struct Spill<'a> {
    /// The frame (header placeholder and payload) while inline; staged payload once spilled.
    out: Vec<u8>,
    file: Option<OwnedFd>,
    /// Payload bytes already written to `file`.
    spilled: usize,
    /// While `out` is shorter than this, a byte can be pushed without any other check.
    fast_until: usize,
    /// The frame length from which the payload goes to a memfd.
    from: usize,
    /// Why writing to the memfd failed (postcard keeps only its own error kinds).
    failure: &'a mut Option<io::Error>,
}

impl Spill<'_> {
    fn payload_len(&self) -> usize {
        match self.file {
            None => self.out.len() - HEADER,
            Some(_) => self.spilled + self.out.len(),
        }
    }

    fn fail(&mut self, e: io::Error) -> postcard::Error {
        *self.failure = Some(e);
        postcard::Error::SerdeSerCustom
    }

    /// Moves the payload so far into a new memfd; `out` becomes the staging buffer.
    fn start_spilling(&mut self) -> postcard::Result<()> {
        let file = sys::memfd_sealable(NAME).map_err(|e| self.fail(e))?;
        let staged = self.out.len() - HEADER;
        if let Err(e) = sys::write_all(file.as_fd(), &self.out[HEADER..]) {
            return Err(self.fail(e));
        }
        self.spilled = staged;
        self.out.clear();
        self.file = Some(file);
        self.fast_until = STAGE;
        Ok(())
    }

    fn flush(&mut self) -> postcard::Result<()> {
        if let Some(file) = &self.file
            && !self.out.is_empty()
        {
            if let Err(e) = sys::write_all(file.as_fd(), &self.out) {
                return Err(self.fail(e));
            }
            self.spilled += self.out.len();
            self.out.clear();
        }
        Ok(())
    }
}

impl postcard::ser_flavors::Flavor for Spill<'_> {
    type Output = (Vec<u8>, Option<OwnedFd>, usize);

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.out.len() < self.fast_until {
            self.out.push(byte);
            return Ok(());
        }
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > MAX_FRAME - self.payload_len().min(MAX_FRAME) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        if self.file.is_none() {
            if self.out.len() + data.len() < self.from {
                self.out.extend_from_slice(data);
                return Ok(());
            }
            self.start_spilling()?;
        }
        if self.out.len() + data.len() <= STAGE {
            self.out.extend_from_slice(data);
            return Ok(());
        }
        self.flush()?;
        if data.len() < STAGE {
            self.out.extend_from_slice(data);
            return Ok(());
        }
        let file = self.file.as_ref().expect("spilling");
        if let Err(e) = sys::write_all(file.as_fd(), data) {
            return Err(self.fail(e));
        }
        self.spilled += data.len();
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Self::Output> {
        if self.file.is_none() {
            return Ok((self.out, None, 0));
        }
        self.flush()?;
        if self.spilled > MAX_FRAME {
            return Err(postcard::Error::SerializeBufferFull);
        }
        let file = self.file.take().expect("spilling");
        if let Err(e) = sys::seal_contents(file.as_fd()) {
            return Err(self.fail(e));
        }
        Ok((std::mem::take(&mut self.out), Some(file), self.spilled))
    }
}

/// The payload of a frame that arrived out of band: `file` checked to be a memfd sealed at
/// exactly `len` bytes before anything reads it.
pub(crate) struct OutOfBand {
    pub(crate) file: OwnedFd,
    pub(crate) len: usize,
}

impl OutOfBand {
    /// Maps the payload read-only.
    pub(crate) fn map(&self) -> io::Result<sys::SealedBytes> {
        sys::SealedBytes::map(self.file.as_fd(), self.len)
    }

    /// Reads the payload into `buf` (exactly `len` bytes long).
    pub(crate) fn read_into(&self, buf: &mut [u8]) -> io::Result<()> {
        sys::check_sealed_len(self.file.as_fd(), self.len)?;
        sys::read_exact_at_start(self.file.as_fd(), buf)
    }

    /// The payload in a new `Vec`.
    pub(crate) fn to_vec(&self) -> io::Result<Vec<u8>> {
        sys::check_sealed_len(self.file.as_fd(), self.len)?;
        let mut v = vec![0u8; self.len];
        sys::read_exact_at_start(self.file.as_fd(), &mut v)?;
        Ok(v)
    }
}
