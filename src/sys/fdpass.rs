//! Unix stream sockets that carry file descriptors (SCM_RIGHTS) beside framed bytes.
//!
//! The spawn and forkserver start methods send a child its boot message over one of these:
//! the frame's bytes, with the descriptors its handles refer to attached to the first chunk.
//!
//! # Safety
//! No `unsafe` here: rustix's `sendmsg`/`recvmsg` own the control-message encoding.
//!
//! # References
//! unix(7) (SCM_RIGHTS), sendmsg(2), recvmsg(2), cmsg(3).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// What every send passes so that a gone peer is `BrokenPipe`, not SIGPIPE. macOS has no
/// `MSG_NOSIGNAL`: there the socket itself must have `SO_NOSIGPIPE`, which [`socketpair`]
/// sets, as std does on the sockets it makes (a socket from elsewhere, handed to
/// `Connection::from_fd`, needs it set by its maker).
#[cfg(not(target_vendor = "apple"))]
pub(crate) const SEND_NOSIGNAL: SendFlags = SendFlags::NOSIGNAL;
#[cfg(target_vendor = "apple")]
pub(crate) const SEND_NOSIGNAL: SendFlags = SendFlags::empty();

/// Received descriptors close-on-exec (macOS: set after the receive, see `recv_with_fds`).
#[cfg(not(target_vendor = "apple"))]
const RECV_CLOEXEC: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(target_vendor = "apple")]
const RECV_CLOEXEC: RecvFlags = RecvFlags::empty();

/// A connected pair of Unix stream sockets, both ends close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    return Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?);
    // macOS has no SOCK_CLOEXEC: the flag is set right after, so a fork + exec by another
    // thread in between can leak the pair into that program (the window std accepts there).
    #[cfg(target_vendor = "apple")]
    {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::empty(),
            None,
        )?;
        for fd in [&a, &b] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
            rustix::net::sockopt::set_socket_nosigpipe(fd, true)?;
        }
        Ok((a, b))
    }
}

/// Writes all of `bytes` to `sock`, with `fds` attached to the first chunk.
///
/// Never raises SIGPIPE: a peer that is gone is an `io::ErrorKind::BrokenPipe` error.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    mut bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one start, over the limit of {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut first = true;
    while first || !bytes.is_empty() {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if first && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("control buffer too small for descriptors"));
        }
        let sent = match rustix::net::sendmsg(
            sock,
            &[io::IoSlice::new(bytes)],
            &mut control,
            SEND_NOSIGNAL,
        ) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        first = false;
        bytes = &bytes[sent..];
    }
    Ok(())
}

/// Reads from `sock` into `buf` (appending), collecting descriptors that arrive into `fds`.
///
/// Returns the number of bytes read; `0` is end of stream. Received descriptors are
/// close-on-exec.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut chunk = [0u8; 64 * 1024];
    let received = recv_exact_with_fds(sock, &mut chunk, fds)?;
    buf.extend_from_slice(&chunk[..received]);
    Ok(received)
}

/// Reads from `sock` into `buf` (at most `buf.len()` bytes, so a caller that asks for exactly
/// one frame never takes bytes of the next), collecting descriptors that arrive into `fds`.
///
/// Returns the number of bytes read; `0` is end of stream. Received descriptors are
/// close-on-exec.
pub(crate) fn recv_exact_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    // On the stack: connections on Unix sockets read every message through here, small
    // ones included, and an allocation per read would cost them.
    const SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));
    let mut space = [MaybeUninit::<u8>::uninit(); SPACE];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = match rustix::net::recvmsg(
            sock,
            &mut [io::IoSliceMut::new(buf)],
            &mut control,
            RECV_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(incoming) = message {
                for fd in incoming {
                    // macOS has no MSG_CMSG_CLOEXEC: the flag is set here, with the window
                    // `socketpair` describes.
                    #[cfg(target_vendor = "apple")]
                    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                    fds.push(fd);
                }
            }
        }
        if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::other("descriptors were truncated in transit"));
        }
        return Ok(received.bytes);
    }
}

/// Whether `fd` is a Unix-domain socket, the only kind that carries descriptors.
///
/// # References
/// getsockopt(2) (`SO_DOMAIN`).
pub(crate) fn is_unix_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // macOS has no SO_DOMAIN: the family of the socket's own address says the same.
    #[cfg(target_vendor = "apple")]
    let domain = rustix::net::getsockname(fd).map(|addr| addr.address_family());
    #[cfg(not(target_vendor = "apple"))]
    let domain = rustix::net::sockopt::socket_domain(fd);
    match domain {
        Ok(domain) => Ok(domain == AddressFamily::UNIX),
        Err(rustix::io::Errno::NOTSOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
