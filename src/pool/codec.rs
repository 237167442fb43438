//! How a chunk of values (`map`, `imap`) is laid out: postcard, except a sequence of plain
//! numbers, which travels as little-endian bytes, as numpy arrays travel as raw buffers in
//! pickle protocol 5.
//!
//! postcard writes every integer as a varint, which costs a dozen nanoseconds an item each way;
//! for `map` over numbers that is most of the work. The first byte says which layout follows.
//! Both ends are this crate, so the choice is made by type alone (`TypeId`), safely: values are
//! reached through `Any`, never by reinterpreting memory.

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

const POSTCARD: u8 = 0;
const RAW: u8 = 1;

/// Encodes a chunk of values.
pub(crate) fn encode_chunk<T: Serialize + 'static>(values: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len().saturating_mul(size_of::<T>() + 1) + 16);
    out.push(RAW);
    if raw_encode(values, &mut out) {
        return Ok(out);
    }
    out[0] = POSTCARD;
    postcard::to_extend(values, out).map_err(|e| Error::with_source(ErrorKind::Encode, e))
}

/// Decodes a chunk made by [`encode_chunk`] for the same `T`.
pub(crate) fn decode_chunk<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<Vec<T>> {
    match bytes.split_first() {
        Some((&POSTCARD, rest)) => crate::wire::from_bytes(rest),
        Some((&RAW, rest)) => raw_decode(rest).unwrap_or_else(|| {
            Err(Error::with_message(
                ErrorKind::Decode,
                "raw chunk for a type that is not a plain number",
            ))
        }),
        _ => Err(Error::with_message(ErrorKind::Decode, "malformed chunk")),
    }
}

macro_rules! plain_numbers {
    ($($t:ty),*) => {
        /// Appends `values` as little-endian bytes if `T` is a plain number type.
        fn raw_encode<T: 'static>(values: &[T], out: &mut Vec<u8>) -> bool {
            let id = TypeId::of::<T>();
            $(
                if id == TypeId::of::<$t>() {
                    for v in values {
                        let v = (v as &dyn Any).downcast_ref::<$t>().expect("type checked above");
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    return true;
                }
            )*
            false
        }

        /// Reads little-endian numbers if `T` is a plain number type.
        fn raw_decode<T: 'static>(bytes: &[u8]) -> Option<Result<Vec<T>>> {
            let id = TypeId::of::<T>();
            $(
                if id == TypeId::of::<$t>() {
                    const N: usize = size_of::<$t>();
                    if !bytes.len().is_multiple_of(N) {
                        return Some(Err(Error::with_message(
                            ErrorKind::Decode,
                            "raw chunk length is not a multiple of the item size",
                        )));
                    }
                    let values: Vec<$t> = bytes
                        .chunks_exact(N)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("N bytes")))
                        .collect();
                    let values: Box<dyn Any> = Box::new(values);
                    return Some(Ok(*values.downcast::<Vec<T>>().expect("type checked above")));
                }
            )*
            None
        }
    };
}

plain_numbers!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
        values: Vec<T>,
        raw: bool,
    ) {
        let bytes = encode_chunk(&values).unwrap();
        assert_eq!(
            bytes[0] == RAW,
            raw,
            "layout for {}",
            std::any::type_name::<T>()
        );
        assert_eq!(decode_chunk::<T>(&bytes).unwrap(), values);
    }

    #[test]
    fn numbers_go_raw_everything_else_postcard() {
        round_trip(vec![0u64, 1, u64::MAX, 1 << 40], true);
        round_trip(vec![-5i32, i32::MIN, i32::MAX], true);
        round_trip(vec![1.5f64, -0.0, f64::INFINITY], true);
        round_trip(vec![u128::MAX, 7], true);
        round_trip(Vec::<u8>::new(), true);
        round_trip(vec![(1u64, 2u64)], false);
        round_trip(vec!["a".to_string(), String::new()], false);
        round_trip(vec![Some(3u8), None], false);
    }

    #[test]
    fn bad_chunks_are_errors() {
        assert!(decode_chunk::<u64>(&[]).is_err());
        assert!(decode_chunk::<u64>(&[9]).is_err());
        assert!(decode_chunk::<u64>(&[RAW, 1, 2, 3]).is_err());
        assert!(decode_chunk::<String>(&[RAW, 1, 2, 3]).is_err());
        assert!(decode_chunk::<u64>(&[POSTCARD, 0xff]).is_err());
    }
}
