//! Naming a function of this executable across processes.
//!
//! A pool worker is started once and then runs many different tasks. Each task names its entry
//! function as a distance from an anchor function in the same executable: the distance is the
//! same in every process that runs this executable (a forked child, or the same binary
//! started fresh with a different load address), so the worker can turn it back into a
//! function pointer.
//!
//! # Safety
//! Turning a number back into a function pointer is sound only when the number was produced by
//! [`pool_entry_offset`] for a function of the same type, in a process running the same executable.
//! [`pool_entry_at`] states that contract; its callers read offsets only from the private pipe of
//! the process that started them.

/// A pool task's entry point: decodes its arguments, runs it, encodes its value.
pub(crate) type PoolEntry = fn(&[u8]) -> crate::error::Result<Vec<u8>>;

#[inline(never)]
fn anchor() {}

/// The distance of `f` from this executable's anchor function.
pub(crate) fn pool_entry_offset(f: PoolEntry) -> i64 {
    (f as usize as i64).wrapping_sub(anchor as fn() as usize as i64)
}

/// The entry function at `offset` from the anchor; `None` if that address is not in this
/// program's code.
///
/// # Safety
/// `offset` must come from [`pool_entry_offset`] in a process running the same executable.
pub(crate) unsafe fn pool_entry_at(offset: i64) -> Option<PoolEntry> {
    let addr = (anchor as fn() as usize as i64).wrapping_add(offset) as usize;
    if !super::image::in_text(addr) {
        return None;
    }
    // SAFETY: by the caller's contract `addr` is the address of a function of type `PoolEntry`
    // in this executable's code (and it lies in that code, checked above); `PoolEntry` is a
    // plain function pointer of the same size.
    Some(unsafe { std::mem::transmute::<usize, PoolEntry>(addr) })
}
