//! Serializing with postcard, with sequences of bytes written in one piece.
//!
//! serde serializes a `Vec<u8>`, a `&[u8]` or a `VecDeque<u8>` as a sequence (`collect_seq`),
//! one `serialize_u8` call per byte, which postcard turns into one push per byte: a 1 MiB
//! `Vec<u8>` took milliseconds where `serde_bytes::ByteBuf` takes a `memcpy`. [`Fast`] wraps
//! postcard's serializer, forwards every call to it unchanged (so the bytes written are
//! exactly postcard's), and only takes over `collect_seq` when the elements are bytes: it
//! writes the length as postcard would and then all the bytes at once ([`Out::extend_bytes`]).

use postcard::ser_flavors::Flavor;
use serde::Serialize;
use serde::ser::{self, Impossible};

type Error = postcard::Error;

/// A postcard output that can take a run of bytes from an iterator in one go.
pub(super) trait Out: Flavor {
    /// Appends the `len` bytes that `bytes` yields; an error if it yields fewer.
    fn extend_bytes(
        &mut self,
        len: usize,
        bytes: impl Iterator<Item = postcard::Result<u8>>,
    ) -> postcard::Result<()>;
}

/// Serializes `value` into `out` with postcard's format.
pub(super) fn serialize<T: Serialize + ?Sized, F: Out>(
    value: &T,
    out: F,
) -> postcard::Result<F::Output> {
    let mut serializer = postcard::Serializer { output: out };
    value.serialize(Fast(&mut serializer))?;
    serializer.output.finalize()
}

/// postcard's serializer, with byte sequences written in one piece.
pub(super) struct Fast<'a, F: Out>(&'a mut postcard::Serializer<F>);

/// Whether the items of a sequence are bytes. std has no `TypeId` for types that may borrow
/// (an item here is usually `&u8`), so this compares names: only `u8` is named `u8` (a user's
/// type carries its path), and the comparison of constant strings costs nothing measurable.
/// Were it ever wrong, the item would fail to serialize ([`ToByte`]), not be written wrong.
#[inline]
fn is_byte<T>() -> bool {
    let name = std::any::type_name::<T>();
    name == std::any::type_name::<u8>() || name == std::any::type_name::<&u8>()
}

/// Counts the bytes a value serializes to, as postcard's `serialized_size` does.
#[derive(Default)]
pub(super) struct Size(usize);

impl Flavor for Size {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

impl Out for Size {
    fn extend_bytes(
        &mut self,
        len: usize,
        _: impl Iterator<Item = postcard::Result<u8>>,
    ) -> postcard::Result<()> {
        // Bytes serialize without side effects and the length is exact (`collect_seq`).
        self.0 += len;
        Ok(())
    }
}

/// Writes into a slice, as postcard's `to_slice` does; the output is the length used.
pub(super) struct Slice<'a> {
    buf: &'a mut [u8],
    used: usize,
}

impl<'a> Slice<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Self {
        Slice { buf, used: 0 }
    }
}

impl Flavor for Slice<'_> {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.used + data.len();
        let dst = self
            .buf
            .get_mut(self.used..end)
            .ok_or(Error::SerializeBufferFull)?;
        dst.copy_from_slice(data);
        self.used = end;
        Ok(())
    }

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        *self
            .buf
            .get_mut(self.used)
            .ok_or(Error::SerializeBufferFull)? = byte;
        self.used += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.used)
    }
}

impl Out for Slice<'_> {
    fn extend_bytes(
        &mut self,
        len: usize,
        bytes: impl Iterator<Item = postcard::Result<u8>>,
    ) -> postcard::Result<()> {
        let end = self
            .used
            .checked_add(len)
            .ok_or(Error::SerializeBufferFull)?;
        let dst = self
            .buf
            .get_mut(self.used..end)
            .ok_or(Error::SerializeBufferFull)?;
        let mut failed = None;
        let mut n = 0;
        for (slot, b) in dst.iter_mut().zip(bytes) {
            *slot = b.unwrap_or_else(|e| {
                failed.get_or_insert(e);
                0
            });
            n += 1;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if n != len {
            // An iterator that yielded fewer items than its exact size hint announced.
            return Err(Error::SerializeSeqLengthUnknown);
        }
        self.used = end;
        Ok(())
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            fn $method(self, $($arg: $ty),*) -> Result<(), Error> {
                ser::Serializer::$method(self.0, $($arg),*)
            }
        )*
    };
}

macro_rules! forward_compound {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $out:ident;)*) => {
        $(
            #[inline]
            fn $method(self, $($arg: $ty),*) -> Result<Self::$out, Error> {
                Ok(Fast(ser::Serializer::$method(self.0, $($arg),*)?))
            }
        )*
    };
}

impl<F: Out> ser::Serializer for Fast<'_, F> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    forward! {
        serialize_bool(v: bool); serialize_i8(v: i8); serialize_i16(v: i16);
        serialize_i32(v: i32); serialize_i64(v: i64); serialize_i128(v: i128);
        serialize_u8(v: u8); serialize_u16(v: u16); serialize_u32(v: u32);
        serialize_u64(v: u64); serialize_u128(v: u128); serialize_f32(v: f32);
        serialize_f64(v: f64); serialize_char(v: char); serialize_str(v: &str);
        serialize_bytes(v: &[u8]); serialize_none(); serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    forward_compound! {
        serialize_seq(len: Option<usize>) -> SerializeSeq;
        serialize_tuple(len: usize) -> SerializeTuple;
        serialize_tuple_struct(name: &'static str, len: usize) -> SerializeTupleStruct;
        serialize_tuple_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> SerializeTupleVariant;
        serialize_map(len: Option<usize>) -> SerializeMap;
        serialize_struct(name: &'static str, len: usize) -> SerializeStruct;
        serialize_struct_variant(
            name: &'static str, index: u32, variant: &'static str, len: usize
        ) -> SerializeStructVariant;
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        // postcard writes `Some` as a 1 before the value.
        ser::Serializer::serialize_u8(&mut *self.0, 1)?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        // postcard writes the variant's index as for a unit variant, then the value.
        ser::Serializer::serialize_unit_variant(&mut *self.0, name, index, variant)?;
        value.serialize(self)
    }

    fn collect_seq<I>(self, iter: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let iter = iter.into_iter();
        // postcard needs the length first, and takes it from the iterator's exact bounds.
        let len = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        match len {
            Some(len) if is_byte::<I::Item>() => {
                ser::Serializer::serialize_seq(&mut *self.0, Some(len))?;
                self.0
                    .output
                    .extend_bytes(len, iter.map(|b| b.serialize(ToByte)))
            }
            _ => {
                let mut seq = ser::Serializer::serialize_seq(self, len)?;
                for item in iter {
                    ser::SerializeSeq::serialize_element(&mut seq, &item)?;
                }
                ser::SerializeSeq::end(seq)
            }
        }
    }

    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        ser::Serializer::collect_str(self.0, value)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

macro_rules! compound {
    ($($trait:ident { $($method:ident($($arg:ident: $ty:ty),*);)* })*) => {
        $(
            impl<F: Out> ser::$trait for Fast<'_, F> {
                type Ok = ();
                type Error = Error;
                $(
                    #[inline]
                    fn $method<T: Serialize + ?Sized>(
                        &mut self, $($arg: $ty,)* value: &T,
                    ) -> Result<(), Error> {
                        $(let _ = $arg;)*
                        // postcard writes neither field names nor separators: each element
                        // is just its value.
                        value.serialize(Fast(&mut *self.0))
                    }
                )*
                #[inline]
                fn end(self) -> Result<(), Error> {
                    Ok(())
                }
            }
        )*
    };
}

compound! {
    SerializeSeq { serialize_element(); }
    SerializeTuple { serialize_element(); }
    SerializeTupleStruct { serialize_field(); }
    SerializeTupleVariant { serialize_field(); }
    SerializeMap { serialize_key(); serialize_value(); }
    SerializeStruct { serialize_field(key: &'static str); }
    SerializeStructVariant { serialize_field(key: &'static str); }
}

/// Takes a byte back out of its `Serialize` (called only for items [`is_byte`] accepted).
struct ToByte;

macro_rules! refuse {
    ($($method:ident($($ty:ty),*);)*) => {
        $(
            fn $method(self, $(_: $ty),*) -> Result<u8, Error> {
                Err(Error::WontImplement)
            }
        )*
    };
}

impl ser::Serializer for ToByte {
    type Ok = u8;
    type Error = Error;
    type SerializeSeq = Impossible<u8, Error>;
    type SerializeTuple = Impossible<u8, Error>;
    type SerializeTupleStruct = Impossible<u8, Error>;
    type SerializeTupleVariant = Impossible<u8, Error>;
    type SerializeMap = Impossible<u8, Error>;
    type SerializeStruct = Impossible<u8, Error>;
    type SerializeStructVariant = Impossible<u8, Error>;

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<u8, Error> {
        Ok(v)
    }

    refuse! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_u16(u16); serialize_u32(u32); serialize_u64(u64);
        serialize_f32(f32); serialize_f64(f64); serialize_char(char); serialize_str(&str);
        serialize_bytes(&[u8]); serialize_none(); serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<u8, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<u8, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<u8, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Err(Error::WontImplement)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(Error::WontImplement)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use crate::wire::{decode_payload, encode_payload, encode_to_slice, serialized_size};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Bytes(Vec<u8>),
        Pair(u8, Vec<u8>),
        Named {
            words: Vec<u16>,
            tail: Option<Box<[u8]>>,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Value {
        bytes: Vec<u8>,
        nested: Vec<Vec<u8>>,
        deque: VecDeque<u8>,
        signed: Vec<i8>,
        text: String,
        map: BTreeMap<u8, Vec<u8>>,
        shapes: Vec<Shape>,
        array: [u8; 5],
        maybe: Option<Vec<u8>>,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Unit),
            any::<Vec<u8>>().prop_map(Shape::Bytes),
            (any::<u8>(), any::<Vec<u8>>()).prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<Vec<u16>>(), any::<Option<Vec<u8>>>()).prop_map(|(words, tail)| {
                Shape::Named {
                    words,
                    tail: tail.map(Vec::into_boxed_slice),
                }
            }),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        (
            (
                any::<Vec<u8>>(),
                any::<Vec<Vec<u8>>>(),
                any::<Vec<u8>>(),
                any::<Vec<i8>>(),
                any::<String>(),
            ),
            (
                any::<BTreeMap<u8, Vec<u8>>>(),
                proptest::collection::vec(shape(), 0..4),
                any::<[u8; 5]>(),
                any::<Option<Vec<u8>>>(),
            ),
        )
            .prop_map(
                |((bytes, nested, deque, signed, text), (map, shapes, array, maybe))| Value {
                    bytes,
                    nested,
                    deque: deque.into(),
                    signed,
                    text,
                    map,
                    shapes,
                    array,
                    maybe,
                },
            )
    }

    proptest! {
        /// The fast paths write exactly postcard's bytes and read them back.
        #[test]
        fn writes_postcards_bytes_and_reads_them_back(v in value()) {
            let ours = encode_payload(&v).unwrap();
            prop_assert_eq!(&ours, &postcard::to_allocvec(&v).unwrap());
            prop_assert_eq!(serialized_size(&v).unwrap(), ours.len());
            prop_assert_eq!(
                postcard::experimental::serialized_size(&v).unwrap(),
                ours.len()
            );
            // Into a slice: exactly the bytes, and an error, never a panic, one byte short.
            let mut buf = vec![0u8; ours.len() + 3];
            prop_assert_eq!(encode_to_slice(&v, &mut buf).unwrap(), ours.len());
            prop_assert_eq!(&buf[..ours.len()], &ours[..]);
            if !ours.is_empty() {
                prop_assert!(encode_to_slice(&v, &mut buf[..ours.len() - 1]).is_err());
            }
            let back: Value = decode_payload(&ours).unwrap();
            prop_assert_eq!(back, v);
        }

        /// On any bytes, decoding agrees with postcard's (same value, or an error where it
        /// errs) and never panics.
        #[test]
        fn reads_any_bytes_as_postcard_does(bytes in any::<Vec<u8>>()) {
            let ours = decode_payload::<Vec<u8>>(&bytes).ok();
            let theirs = postcard::take_from_bytes::<Vec<u8>>(&bytes)
                .ok()
                .filter(|(_, rest)| rest.is_empty())
                .map(|(v, _)| v);
            prop_assert_eq!(ours, theirs);
            let ours = decode_payload::<Value>(&bytes).ok();
            let theirs = postcard::take_from_bytes::<Value>(&bytes)
                .ok()
                .filter(|(_, rest)| rest.is_empty())
                .map(|(v, _)| v);
            prop_assert_eq!(ours, theirs);
        }
    }

    /// A sequence of bytes from an iterator whose length is not known up front is refused,
    /// as postcard refuses it, rather than written wrong.
    #[test]
    fn a_byte_sequence_of_unknown_length_is_refused() {
        struct Filtered(Vec<u8>);
        impl Serialize for Filtered {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().filter(|&&b| b > 0))
            }
        }
        assert!(encode_payload(&Filtered(vec![1, 0, 2])).is_err());
        assert!(serialized_size(&Filtered(vec![1, 0, 2])).is_err());
        assert!(encode_to_slice(&Filtered(vec![1, 0, 2]), &mut [0u8; 16]).is_err());
        assert!(postcard::to_allocvec(&Filtered(vec![1, 0, 2])).is_err());
    }
}
