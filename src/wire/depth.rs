//! A bound on how deeply nested a decoded value may be.
//!
//! Decoding a recursive type recurses once per level of nesting, so bytes describing a value
//! nested a hundred thousand levels deep (a few hundred kilobytes of postcard) would overflow
//! the receiving thread's stack and abort the process: a peer could crash any reader, and a
//! queue item like that would crash every consumer that took it in turn. [`Bounded`] wraps a
//! serde `Deserializer` and counts levels as it goes down (a sequence, tuple, struct, map,
//! enum variant, `Some` or newtype each open one); past the limit it fails instead of
//! recursing further, so the bytes are consumed as a decode error like any other bad message.
//!
//! Every method forwards to the wrapped deserializer, visitor or accessor; only the five
//! visitor methods through which serde goes one level down count. The thread's stack is looked
//! at every [`STACK_CHECK_EVERY`] levels only, and methods that can only produce a plain value
//! skip the wrapper, so a flat value pays a counter copied along and nothing else (measured
//! with cachegrind: 17 more instructions to decode a `u64`, about 70 more for a small struct
//! with a string, a vector and an option, out of about 800).

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Which bound a decode hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limit {
    /// [`MAX_DECODE_DEPTH`](super::MAX_DECODE_DEPTH) levels.
    Depth,
    /// Less than [`STACK_RESERVE`] of the thread's stack left.
    Stack,
}

/// Decoding stops when less than this much of the thread's stack is left: room for one more
/// level's frames and for what a leaf does (allocating a `String`, a user `Deserialize`).
pub(super) const STACK_RESERVE: usize = 64 * 1024;

/// Levels between two looks at the stack: few enough that they fit in [`STACK_RESERVE`] even
/// in a debug build (about 1.5 KiB a level), many enough that flat values never look.
const STACK_CHECK_EVERY: usize = 16;

/// The levels still allowed below the current one, and where to note which limit was hit
/// (postcard keeps no message for custom errors, so the caller learns the reason here).
#[derive(Clone, Copy)]
pub(super) struct Depth<'a> {
    left: usize,
    hit: &'a Cell<Option<Limit>>,
}

impl<'a> Depth<'a> {
    pub(super) fn new(limit: usize, hit: &'a Cell<Option<Limit>>) -> Self {
        Depth { left: limit, hit }
    }

    /// One level further down, or an error once a limit is reached.
    #[inline]
    fn descend<E: de::Error>(self) -> Result<Self, E> {
        match self.left.checked_sub(1) {
            Some(left) if !left.is_multiple_of(STACK_CHECK_EVERY) => Ok(Depth { left, ..self }),
            Some(left) if !stack_is_low() => Ok(Depth { left, ..self }),
            Some(_) => Err(self.fail(Limit::Stack)),
            None => Err(self.fail(Limit::Depth)),
        }
    }

    #[cold]
    fn fail<E: de::Error>(self, limit: Limit) -> E {
        self.hit.set(Some(limit));
        E::custom("value nested too deeply")
    }
}

/// Whether less than [`STACK_RESERVE`] of this thread's stack is left. Running on some other
/// stack (below the thread's, such as a coroutine's) is not judged: there only the depth
/// counts.
#[inline(never)]
fn stack_is_low() -> bool {
    match crate::sys::stack_bounds() {
        Some((low, _)) => crate::sys::stack_pointer().wrapping_sub(low) < STACK_RESERVE,
        None => false,
    }
}

/// A deserializer that fails rather than go deeper than its [`Depth`] allows.
pub(super) struct Bounded<'a, D> {
    pub(super) inner: D,
    pub(super) depth: Depth<'a>,
}

struct Vis<'a, V> {
    inner: V,
    depth: Depth<'a>,
}

struct Seed<'a, S> {
    inner: S,
    depth: Depth<'a>,
}

struct Access<'a, A> {
    inner: A,
    depth: Depth<'a>,
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* Vis { inner: visitor, depth: self.depth })
            }
        )*
    };
}

/// Methods whose visitor postcard only ever hands a plain value (a number, a string, bytes, a
/// unit), never a deserializer or an accessor to go further down with: they need no
/// counting, and skip the wrapper.
macro_rules! forward_leaf {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_leaf! {
        deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_identifier();
    }

    forward_deserialize! {
        // postcard refuses these two (it is not self-describing); were they supported, the
        // visitor could be handed anything, so they count.
        deserialize_any(); deserialize_ignored_any();
        deserialize_option();
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq(); deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            #[inline]
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char);
        visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
        visit_bytes(&[u8]); visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_some(Bounded { inner: d, depth })
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_newtype_struct(Bounded { inner: d, depth })
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_seq(Access { inner: seq, depth })
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_map(Access { inner: map, depth })
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.descend()?;
        self.inner.visit_enum(Access { inner: data, depth })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.deserialize(Bounded {
            inner: d,
            depth: self.depth,
        })
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(Seed {
            inner: seed,
            depth: self.depth,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(Seed {
            inner: seed,
            depth: self.depth,
        })
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(Seed {
            inner: seed,
            depth: self.depth,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<'a, A> {
    type Error = A::Error;
    type Variant = Access<'a, A::Variant>;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let depth = self.depth;
        let (value, variant) = self.inner.variant_seed(Seed { inner: seed, depth })?;
        Ok((
            value,
            Access {
                inner: variant,
                depth,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            depth: self.depth,
        })
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            Vis {
                inner: visitor,
                depth: self.depth,
            },
        )
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            Vis {
                inner: visitor,
                depth: self.depth,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::wire::{MAX_DECODE_DEPTH, decode_payload, from_bytes};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum Nest {
        Leaf,
        Node(Box<Nest>),
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct List {
        value: u32,
        next: Option<Box<List>>,
    }

    /// The postcard bytes of `Nest` nested `levels` deep: variant 1 (`Node`) `levels` times,
    /// then variant 0 (`Leaf`). Built flat, so the sender needs no deep stack.
    fn nest_bytes(levels: usize) -> Vec<u8> {
        let mut b = vec![1u8; levels];
        b.push(0);
        b
    }

    /// Runs `f` on a thread with a `stack`-byte stack.
    fn on_stack<R: Send + 'static>(stack: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn forget_deep(n: Nest) {
        // Dropping a deep `Box` chain recurses too; tests do not care about that memory.
        std::mem::forget(n);
    }

    #[test]
    fn the_limit_is_exact_and_flat_values_are_unaffected() {
        on_stack(2 << 20, || {
            // `Nest` costs one level per variant: the outermost enum is level 1.
            let ok: Nest = decode_payload(&nest_bytes(MAX_DECODE_DEPTH - 1)).unwrap();
            forget_deep(ok);
            let e = decode_payload::<Nest>(&nest_bytes(MAX_DECODE_DEPTH)).unwrap_err();
            assert!(e.to_string().contains("nested more than"), "{e}");
            let e = from_bytes::<Nest>(&nest_bytes(MAX_DECODE_DEPTH)).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Decode);
            assert!(e.to_string().contains("nested more than"), "{e}");
            // Long but flat: a million elements is one level.
            let flat: Vec<Vec<u8>> = vec![vec![7]; 1_000_000];
            let bytes = postcard::to_allocvec(&flat).unwrap();
            assert_eq!(decode_payload::<Vec<Vec<u8>>>(&bytes).unwrap(), flat);
        });
    }

    #[test]
    fn a_hostile_depth_is_an_error_not_a_stack_overflow() {
        for stack in [2 << 20, 256 << 10, 128 << 10] {
            let e = on_stack(stack, || {
                decode_payload::<Nest>(&nest_bytes(200_000))
                    .unwrap_err()
                    .to_string()
            });
            assert!(e.contains("nested"), "{stack}: {e}");
        }
    }

    #[test]
    fn a_small_stack_stops_decoding_before_the_depth_limit() {
        // In a 128 KiB thread, well under MAX_DECODE_DEPTH levels exhaust the stack in a
        // debug build; decoding must stop with an error, not overflow. (In an optimised build
        // the levels may fit: then the value decodes, which is just as fine.)
        let outcome = on_stack(128 << 10, || {
            match decode_payload::<Nest>(&nest_bytes(MAX_DECODE_DEPTH - 1)) {
                Ok(n) => {
                    forget_deep(n);
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        });
        if let Some(e) = &outcome {
            assert!(e.contains("stack"), "{e}");
        }
        assert!(cfg!(not(debug_assertions)) || outcome.is_some());
    }

    #[test]
    fn options_and_structs_count_levels() {
        let mut list = List {
            value: 0,
            next: None,
        };
        for value in 1..=100 {
            list = List {
                value,
                next: Some(Box::new(list)),
            };
        }
        let bytes = postcard::to_allocvec(&list).unwrap();
        assert_eq!(decode_payload::<List>(&bytes).unwrap(), list);
        // Two levels per node (the struct and its `Some`).
        let mut deep = List {
            value: 0,
            next: None,
        };
        for value in 1..MAX_DECODE_DEPTH as u32 / 2 + 1 {
            deep = List {
                value,
                next: Some(Box::new(deep)),
            };
        }
        let bytes = on_stack(64 << 20, move || {
            let b = postcard::to_allocvec(&deep).unwrap();
            std::mem::forget(deep);
            b
        });
        let e = on_stack(2 << 20, move || decode_payload::<List>(&bytes).unwrap_err());
        assert!(e.to_string().contains("nested more than"), "{e}");
    }
}
