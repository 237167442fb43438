//! The running program's image, on both layers (each includes this file as its `image`
//! module): code addresses that mean the same thing in a re-executed copy of it, and the
//! pre-main hook through which such a copy becomes a child instead of running `main`. The
//! image format is chosen per target with `cfg`, as `stack.rs` does:
//!
//! - **ELF on Linux** (built here): the hook in `.init_array`; the image is `__ehdr_start` to
//!   `etext`; the main executable is the one whose program headers `getauxval(AT_PHDR)` names.
//! - **ELF on the BSDs** (FreeBSD checked with `cargo check --target x86_64-unknown-freebsd`;
//!   NetBSD, OpenBSD, DragonFly not compiled here): the same hook and bounds (the static
//!   linkers they use, lld and GNU ld, define both symbols); the main executable is the first
//!   object `dl_iterate_phdr` reports, which each of their manuals says is the program.
//! - **Mach-O** (macOS and the other Apple targets; **not compiled here**): the hook in
//!   `__DATA,__mod_init_func`, which dyld runs before `main`; the image is this image's Mach-O
//!   header (`__dso_handle`, defined by the linker in every image) to the end of its `__TEXT`
//!   segment (`getsegmentdata`, slide-adjusted), code and read-only constants; the main
//!   executable is the image whose header is dyld's image 0 (`_dyld_get_image_header(0)`).
//!
//! A child's entry point is a monomorphised `fn`. Its address differs between runs (ASLR, PIE)
//! but its distance from any other function of the same binary does not, so the parent sends
//! `entry - anchor` and the child adds its own anchor back. The child accepts the result only
//! if the parent ran the very same file (checked first, by device, inode, size and mtime) and
//! the address lies in this program's image below the end of its code, so garbage can never
//! make it jump outside the program's own code and constants.
//!
//! # Safety
//! The `unsafe` spots: the hook's slot (a linker section attribute, sound because the slot
//! holds a plain `extern "C" fn()`, the type each format's loader calls), reading the image's
//! bounds (symbols defined by the static linker, only their addresses taken; on Mach-O a
//! dyld call on this image's own header), turning a validated address back into a function
//! pointer, sound because the address is the same function's address in the same binary, as
//! argued at the block, and `fstat` of the boot descriptor. Removing an environment variable
//! is `unsafe` in edition 2024 because other threads may read the environment; it runs only
//! before `main` or as `main`'s first line.
//!
//! # References
//! ELF gABI (`.init_array`, `__ehdr_start`), ld(1) (`etext`), getauxval(3), dl_iterate_phdr(3),
//! Apple's Mach-O and dyld headers (`mach-o/getsect.h`, `mach-o/dyld.h`), rust-lang/rust#47384
//! (keeping a `#[used]` static from an rlib).

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::manager::ModifyEntry;
use crate::manager::remote::{CtorEntry, DispatchEntry};
use crate::pool::PoolEntry;
use crate::process::target::Entry;

#[cfg(not(target_vendor = "apple"))]
mod format {
    // SAFETY: both symbols are defined by the static linker (GNU ld, gold, lld, mold) for every
    // ELF executable: the start of its ELF header and the end of its text. Only their addresses
    // are taken, never their contents.
    unsafe extern "C" {
        static __ehdr_start: u8;
        static etext: u8;
    }

    pub(super) fn text_range() -> (usize, usize) {
        (
            (&raw const __ehdr_start) as usize,
            (&raw const etext) as usize,
        )
    }

    /// Whether this crate's image is the main executable (not a shared library loaded into
    /// some other program): the kernel's pointer to the executable's program headers then
    /// lies in our image.
    #[cfg(target_os = "linux")]
    pub(super) fn in_main_executable() -> bool {
        // SAFETY: `getauxval` only reads the auxiliary vector the kernel passed at exec.
        let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
        super::in_text(phdr)
    }

    /// Whether this crate's image is the main executable: the first object
    /// `dl_iterate_phdr` reports is the program, and its program headers then lie in our
    /// image.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn in_main_executable() -> bool {
        unsafe extern "C" fn first(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            out: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `info` points to the loader's record for this callback's duration and
            // `out` to the `usize` passed below; returning 1 stops after the first object.
            unsafe { *out.cast::<usize>() = (*info).dlpi_phdr as usize };
            1
        }
        let mut phdr = 0usize;
        // SAFETY: the callback has the type `dl_iterate_phdr` expects and writes only through
        // the pointer to `phdr`, which lives across the call.
        unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut phdr).cast()) };
        phdr != 0 && super::in_text(phdr)
    }

    /// The hook's slot: `.init_array` holds pointers to `extern "C" fn()` that the dynamic
    /// loader (or libc's static start code) calls once, before `main`, on the main thread.
    macro_rules! pre_main_slot {
        ($item:item) => {
            #[used]
            #[unsafe(link_section = ".init_array")]
            $item
        };
    }
    pub(super) use pre_main_slot;
}

// Not compiled here (module note).
#[cfg(target_vendor = "apple")]
mod format {
    use std::ffi::{c_char, c_ulong, c_void};

    // SAFETY: `__dso_handle` is defined by the static linker in every Mach-O image as its own
    // Mach-O header (only its address is taken); `getsegmentdata` and `_dyld_get_image_header`
    // are libSystem's, with these C signatures (`mach-o/getsect.h`, `mach-o/dyld.h`).
    unsafe extern "C" {
        static __dso_handle: u8;
        fn getsegmentdata(
            mhp: *const c_void,
            segname: *const c_char,
            size: *mut c_ulong,
        ) -> *mut u8;
        fn _dyld_get_image_header(image_index: u32) -> *const c_void;
    }

    pub(super) fn text_range() -> (usize, usize) {
        let header = (&raw const __dso_handle).cast::<c_void>();
        let mut size: c_ulong = 0;
        // SAFETY: `header` is this image's loaded Mach-O header, the name a C string, and
        // `size` a live c_ulong; the call only reads the load commands.
        let text = unsafe { getsegmentdata(header, c"__TEXT".as_ptr(), &mut size) };
        if text.is_null() {
            return (0, 0); // no __TEXT: nothing counts as code, no entry is sent
        }
        (header as usize, text as usize + size as usize)
    }

    /// Whether this crate's image is the main executable: dyld's image 0 is the program.
    pub(super) fn in_main_executable() -> bool {
        // SAFETY: image 0 always exists in a running program; the call only reads dyld's list.
        let main = unsafe { _dyld_get_image_header(0) };
        main as usize == (&raw const __dso_handle) as usize
    }

    /// The hook's slot: dyld calls each pointer in `__DATA,__mod_init_func` once, before
    /// `main`, on the main thread.
    macro_rules! pre_main_slot {
        ($item:item) => {
            #[used]
            #[unsafe(link_section = "__DATA,__mod_init_func")]
            $item
        };
    }
    pub(super) use pre_main_slot;
}

use format::{in_main_executable, text_range};

/// The fixed point offsets are measured from.
#[inline(never)]
fn anchor() -> u32 {
    std::hint::black_box(0x6d70_7263)
}

fn in_text(addr: usize) -> bool {
    let (start, end) = text_range();
    start <= addr && addr < end
}

/// Function pointer types that may be named across processes by their distance from the
/// anchor: a start method's [`Entry`], a pool task's [`PoolEntry`], a barrier's action
/// (`fn()`) and a manager's [`ModifyEntry`].
pub(crate) trait CodeFn: Copy + sealed::Sealed {
    /// The function's code address.
    fn address(self) -> usize;

    /// # Safety
    /// `addr` must be the address of a function of exactly this type.
    unsafe fn from_address(addr: usize) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! code_fns {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl CodeFn for $t {
            fn address(self) -> usize {
                self as usize
            }
            unsafe fn from_address(addr: usize) -> Self {
                // SAFETY: by this function's contract `addr` is the address of a function of
                // this very type; a function pointer is a code address on every Unix target
                // this crate builds for.
                unsafe { std::mem::transmute::<usize, $t>(addr) }
            }
        }
    )*};
}

code_fns!(
    Entry,
    PoolEntry,
    fn(),
    ModifyEntry,
    CtorEntry,
    DispatchEntry
);

fn anchor_address() -> usize {
    anchor as fn() -> u32 as usize
}

/// `entry`'s distance from the anchor, or `None` when it is not code of the main executable
/// (e.g. this crate was loaded from a shared library, where re-executing the program would not
/// bring the function back).
pub(crate) fn entry_offset<F: CodeFn>(entry: F) -> Option<i64> {
    let addr = entry.address();
    if !in_text(addr) || !in_text(anchor_address()) || !in_main_executable() {
        return None;
    }
    Some(addr as i64 - anchor_address() as i64)
}

/// The function at `offset` from the anchor, if that address lies in this program's text.
///
/// Offsets must come from [`entry_offset`] for the same type `F` in a process running this
/// same binary: a re-executed child checks that first ([`super::exe_identity`]), and a pool
/// worker reads offsets only from its own pool's private pipe. The text check only bounds the
/// damage if that was not so.
pub(crate) fn entry_at<F: CodeFn>(offset: i64) -> Option<F> {
    let addr = (anchor_address() as i64).checked_add(offset)? as usize;
    if !in_text(addr) {
        return None;
    }
    // SAFETY: per the contract above, `offset` was computed by `entry_offset` from a value of
    // type `F` in the same binary, and code layout within one binary does not change between
    // executions or across fork, so `addr` is that same function, with that same signature.
    Some(unsafe { F::from_address(addr) })
}

// ---------------------------------------------------------------------------------------------
// The pre-main hook.

static HOOK_RAN: AtomicBool = AtomicBool::new(false);

extern "C" fn pre_main() {
    HOOK_RAN.store(true, Ordering::Relaxed);
    // Unwinding out of an `extern "C"` function aborts anyway; do it explicitly.
    if std::panic::catch_unwind(crate::start::pre_main).is_err() {
        std::process::abort();
    }
}

// SAFETY: the format's hook section (see `format::pre_main_slot`) holds pointers to
// `extern "C" fn()` that the loader calls once, before `main`, on the main thread; `pre_main`
// has exactly that type and never unwinds out.
format::pre_main_slot! {
    static PRE_MAIN: extern "C" fn() = pre_main;
}

/// Whether the pre-main hook ran in this process. Referencing the hook's static here also keeps
/// its object file in the link whenever a start method can re-execute the program.
pub(crate) fn pre_main_hook_ran() -> bool {
    std::hint::black_box(&PRE_MAIN);
    HOOK_RAN.load(Ordering::Relaxed)
}

/// Reads and removes an environment variable, so that programs the child later starts do not
/// see it. Call only before `main` or as the first statement of `main`, before any thread
/// starts.
pub(crate) fn take_env(name: &str) -> Option<OsString> {
    let value = std::env::var_os(name)?;
    // SAFETY: edition 2024 marks this unsafe because another thread could read the environment
    // concurrently; callers run before `main` or at its very start (documented on `init`),
    // when this program has no other threads.
    unsafe { std::env::remove_var(name) };
    Some(value)
}

/// Takes ownership of the boot socket a spawned child finds at [`super::BOOT_FD`], if that
/// descriptor is a socket.
pub(crate) fn take_boot_fd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fstat` on any descriptor number is harmless (EBADF if it is not open) and
    // writes the struct through a valid pointer; it is read only on success.
    if unsafe { libc::fstat(super::BOOT_FD, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful `fstat` above.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    // SAFETY: the caller saw the start marker in the environment, so this program was started
    // by `spawn_self`, which placed the boot socket at BOOT_FD and nothing else; no other code
    // in this process has claimed it yet, because this runs before `main`.
    Some(unsafe { OwnedFd::from_raw_fd(super::BOOT_FD) })
}
