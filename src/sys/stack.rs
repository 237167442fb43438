//! Where the calling thread's stack ends, so that recursive decoding can stop with an error
//! before it overflows a small stack.
//!
//! Shared by every platform layer. POSIX has no call for a thread's own stack, so each C
//! library's is used: `pthread_getattr_np` (glibc, musl, NetBSD), `pthread_attr_get_np`
//! (FreeBSD, DragonFly, OpenBSD), `pthread_get_stackaddr_np` and `pthread_get_stacksize_np`
//! (macOS); anywhere else the bounds are unknown and only the decoder's depth count applies.
//! Only the Linux branch is built and tested here (on both layers).
//!
//! # Safety
//! The attribute object is filled by the C library in this frame; two integers are read out
//! of it and it is destroyed before returning.

use std::cell::Cell;

thread_local! {
    /// This thread's stack as `(lowest, highest)` address, looked up on first use;
    /// `(0, 0)` when the OS could not tell.
    static BOUNDS: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// The calling thread's stack as `(lowest, highest)` address, or `None` if unknown. Looked up
/// once per thread (for the main thread glibc reads `/proc/self/maps`).
///
/// # References
/// pthread_getattr_np(3), pthread_attr_getstack(3).
pub(crate) fn stack_bounds() -> Option<(usize, usize)> {
    let bounds = BOUNDS.with(|b| match b.get() {
        Some(known) => known,
        None => {
            let found = query().unwrap_or((0, 0));
            b.set(Some(found));
            found
        }
    });
    (bounds.1 > bounds.0).then_some(bounds)
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd"
))]
fn query() -> Option<(usize, usize)> {
    // SAFETY: an all-zero `pthread_attr_t` is a valid argument for the C library's call below,
    // which fills it (FreeBSD's and OpenBSD's want it initialised first, which `init` does);
    // it is destroyed below once filled.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    #[cfg(any(target_os = "freebsd", target_os = "dragonfly", target_os = "openbsd"))]
    // SAFETY: `attr` is writable and lives across the call.
    unsafe {
        libc::pthread_attr_init(&mut attr)
    };
    // SAFETY: `pthread_self()` is the calling thread, and `attr` is writable and lives across
    // the call.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "netbsd"))]
    let rc = unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) };
    // SAFETY: as above.
    #[cfg(any(target_os = "freebsd", target_os = "dragonfly", target_os = "openbsd"))]
    let rc = unsafe { libc::pthread_attr_get_np(libc::pthread_self(), &mut attr) };
    if rc != 0 {
        return None;
    }
    let mut addr: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was filled by the call above; the out-pointers are valid locals.
    // `pthread_attr_destroy` is called once, on that initialised object.
    let ok = unsafe {
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        r == 0
    };
    let low = addr as usize;
    (ok && low != 0).then(|| (low, low.saturating_add(size)))
}

/// macOS: the stack's top and size, from the calls made for exactly this.
#[cfg(target_vendor = "apple")]
fn query() -> Option<(usize, usize)> {
    // SAFETY: both take the calling thread's own handle and only read its descriptor.
    let (top, size) = unsafe {
        let me = libc::pthread_self();
        (
            libc::pthread_get_stackaddr_np(me) as usize,
            libc::pthread_get_stacksize_np(me),
        )
    };
    (top != 0 && size != 0).then(|| (top.saturating_sub(size), top))
}

/// No known call: recursion depth is then limited by the decoder's own count alone.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
    target_vendor = "apple"
)))]
fn query() -> Option<(usize, usize)> {
    None
}

/// The current stack pointer (approximately: the address of a local on other architectures).
#[inline(always)]
pub(crate) fn stack_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let sp: usize;
        // SAFETY: copies the stack pointer register into a general register; touches no
        // memory and leaves the stack and flags unchanged.
        unsafe {
            std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let sp: usize;
        // SAFETY: as above, for aarch64's stack pointer.
        unsafe {
            std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0u8;
        std::hint::black_box(&raw const marker) as usize
    }
}
