//! Moves bytes between two sockets through a kernel pipe with splice(2), so
//! undelayed traffic never enters userspace: copying every chunk in and out
//! of a buffer costs the proxy about half of direct loopback throughput on a
//! busy host, splicing a small share of it.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// What one splice asks for; the pipe is grown towards it when the system
/// allows (the default pipe holds 64 KiB).
const CHUNK: usize = 256 * 1024;

/// Moves bytes from one socket to another, cancel-safe: bytes taken from the
/// source are kept until delivered, so a transfer interrupted by a fault
/// change loses nothing and keeps order.
#[derive(Debug)]
pub(crate) enum Mover {
    Pipe(Pipe),
    /// When no pipe can be made (out of descriptors): copy through memory.
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Mover {
    pub(crate) fn new() -> Mover {
        Pipe::mover().unwrap_or_else(|| Mover::Buffer {
            buf: vec![0u8; FALLBACK_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// Waits for bytes on `from` and delivers them to `to`; Ok(0) at end of
    /// stream.
    pub(crate) async fn transfer(
        &mut self,
        from: &mut OwnedReadHalf,
        to: &mut OwnedWriteHalf,
    ) -> io::Result<usize> {
        self.drain(to).await?;
        let n = match self {
            Mover::Pipe(pipe) => pipe.fill(from).await?,
            Mover::Buffer { buf, start, end } => {
                let n = from.read(buf).await?;
                (*start, *end) = (0, n);
                n
            }
        };
        self.drain(to).await?;
        Ok(n)
    }

    /// Delivers whatever is held to `to`.
    pub(crate) async fn drain(&mut self, to: &mut OwnedWriteHalf) -> io::Result<()> {
        match self {
            Mover::Pipe(pipe) => pipe.drain(to).await,
            Mover::Buffer { buf, start, end } => {
                while start < end {
                    let n = to.write(&buf[*start..*end]).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    *start += n;
                }
                Ok(())
            }
        }
    }
}

const FALLBACK_BUFFER: usize = 64 * 1024;

/// A pipe and the bytes it holds, which survive a cancelled transfer: the
/// next transfer or [`Pipe::drain`] delivers them first, so order is kept.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
}

impl Pipe {
    fn mover() -> Option<Mover> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).ok()?;
        // Unprivileged processes may be capped below CHUNK; 64 KiB still works.
        let _ = fcntl_setpipe_size(&write, CHUNK);
        Some(Mover::Pipe(Pipe {
            read,
            write,
            held: 0,
        }))
    }

    /// Waits for bytes on `from` and moves them into the pipe.
    async fn fill(&mut self, from: &OwnedReadHalf) -> io::Result<usize> {
        let from: &TcpStream = from.as_ref();
        let n = loop {
            from.readable().await?;
            let spliced = from.try_io(Interest::READABLE, || {
                splice(
                    from.as_fd(),
                    None,
                    &self.write,
                    None,
                    CHUNK,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
                .map_err(io::Error::from)
            });
            match spliced {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        self.held += n;
        Ok(n)
    }

    async fn drain(&mut self, to: &OwnedWriteHalf) -> io::Result<()> {
        let to: &TcpStream = to.as_ref();
        while self.held > 0 {
            to.writable().await?;
            let spliced = to.try_io(Interest::WRITABLE, || {
                splice(
                    &self.read,
                    None,
                    to.as_fd(),
                    None,
                    self.held,
                    SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
                )
                .map_err(io::Error::from)
            });
            match spliced {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
