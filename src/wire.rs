//! Framing: how one serialized message travels over a byte stream.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of postcard. postcard
//! only ever builds plain data from bytes: decoding never runs code, unlike Python's pickle.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Bytes in a frame header.
pub(crate) const HEADER: usize = 4;

/// The largest frame accepted; a header claiming more is an error, not an allocation.
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// Serializes `value` into one frame.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![0u8; HEADER];
    out = postcard::to_extend(value, out).map_err(|e| Error::with_source(ErrorKind::Encode, e))?;
    let len = out.len() - HEADER;
    if len > MAX_FRAME {
        return Err(Error::with_message(
            ErrorKind::Encode,
            format!("message of {len} bytes exceeds the {MAX_FRAME}-byte limit"),
        ));
    }
    out[..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// If `buf` starts with a whole frame, decodes it and returns the value and the bytes used.
pub(crate) fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let value = postcard::from_bytes(&buf[HEADER..HEADER + len])?;
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
