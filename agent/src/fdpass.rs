//! Descriptors passed over the control socket (`SCM_RIGHTS`).
//!
//! Owns the two ends: `send_with_fd` (the client sends a message with one
//! open descriptor attached to its first byte, so that the agent reads a
//! deploy source with the caller's rights, not its own) and `FdReader` (the
//! agent's read side of a connection, which keeps the descriptors that
//! arrive, at most `MAX_PENDING`, for the call that declares one).
//!
//! Must never keep more descriptors than `MAX_PENDING` per connection (the
//! rest are closed at once) and never interpret what a descriptor is: the
//! stager checks it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, RecvMsg, UnixAddr,
};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Most descriptors a connection may have waiting for a call.
pub const MAX_PENDING: usize = 4;

/// Sends `bytes` on `writer` with `fd` attached; the rest of a partial
/// send goes as plain bytes.
pub async fn send_with_fd(
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let stream = writer.as_ref();
    let sent = loop {
        stream.writable().await?;
        let r = stream.try_io(Interest::WRITABLE, || {
            let fds = [fd.as_raw_fd()];
            sendmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match r {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    tokio::io::AsyncWriteExt::write_all(writer, &bytes[sent..]).await
}

/// The agent's read side of a connection: bytes as usual, and the
/// descriptors that came with them.
pub struct FdReader {
    half: OwnedReadHalf,
    fds: VecDeque<OwnedFd>,
    /// More descriptors came than `MAX_PENDING`, or some were cut off.
    overflow: bool,
}

impl FdReader {
    /// Reads `half`, keeping passed descriptors.
    pub fn new(half: OwnedReadHalf) -> FdReader {
        FdReader {
            half,
            fds: VecDeque::new(),
            overflow: false,
        }
    }

    /// The oldest descriptor waiting, if any; an error if descriptors were
    /// lost (too many sent, or cut off by the kernel).
    pub fn take_fd(&mut self) -> io::Result<Option<OwnedFd>> {
        if self.overflow {
            return Err(io::Error::other(format!(
                "more than {MAX_PENDING} descriptors were sent on this connection"
            )));
        }
        Ok(self.fds.pop_front())
    }
}

/// Takes ownership of a descriptor the kernel just installed for us.
#[allow(unsafe_code)]
fn owned(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` came in an SCM_RIGHTS message received by `recvmsg`: the
    // kernel opened it in our table for this call, and nothing else knows
    // or owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl AsyncRead for FdReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            ready!(me.half.as_ref().poll_read_ready(cx))?;
            let stream = me.half.as_ref();
            let unfilled = buf.initialize_unfilled();
            // `try_io` clears readiness on WouldBlock; `recv` needs `me`, so
            // the socket is borrowed again inside.
            let r = stream.try_io(Interest::READABLE, || {
                let mut space = nix::cmsg_space!([RawFd; MAX_PENDING]);
                let mut iov = [io::IoSliceMut::new(unfilled)];
                let msg: RecvMsg<'_, '_, UnixAddr> = recvmsg(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )?;
                let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        fds.extend(raw.into_iter().map(owned));
                    }
                }
                Ok((msg.bytes, fds, truncated))
            });
            match r {
                Ok((n, fds, truncated)) => {
                    me.overflow |= truncated;
                    for fd in fds {
                        if me.fds.len() < MAX_PENDING {
                            me.fds.push_back(fd);
                        } else {
                            me.overflow = true;
                        }
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_descriptor_travels_with_its_message() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, mut wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"the caller's file").unwrap();
        file.rewind().unwrap();
        send_with_fd(&mut wa, b"hello\0", file.as_fd())
            .await
            .unwrap();
        let mut reader = FdReader::new(rb);
        let mut got = [0u8; 6];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello\0");
        let fd = reader.take_fd().unwrap().expect("a descriptor");
        let mut passed = std::fs::File::from(fd);
        let mut text = String::new();
        passed.read_to_string(&mut text).unwrap();
        assert_eq!(text, "the caller's file");
        assert!(reader.take_fd().unwrap().is_none());
    }

    #[tokio::test]
    async fn too_many_descriptors_are_closed_and_reported() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, mut wa) = a.into_split();
        let (rb, _wb) = b.into_split();
        let file = tempfile::tempfile().unwrap();
        for _ in 0..=MAX_PENDING {
            send_with_fd(&mut wa, b"x", file.as_fd()).await.unwrap();
        }
        drop(wa);
        let mut reader = FdReader::new(rb);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        assert!(reader.take_fd().is_err());
    }
}
