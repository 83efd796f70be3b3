//! An opened serial port as the readers use it: tokio-serial's port underneath (mio-serial's stream,
//! which tokio-serial wraps), with readiness handled here so that a wake-up costs one `read`.
//!
//! tokio-serial's stream learns that a port is drained only from a `read` that fails with EAGAIN, so
//! every line costs two reads. A read that returns less than it was offered has drained the tty's
//! buffer, so this stream clears readiness right there, as tokio does for its own sockets; bytes that
//! arrive meanwhile raise a new readiness event that the clear does not erase. Reads and writes take
//! `&Serial`, so one port is read and written at once without a lock between the halves. Flushing
//! does not wait for the line (see `poll_flush`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An open serial port, registered with the runtime.
pub struct Serial {
    port: AsyncFd<mio_serial::SerialStream>,
}

impl Serial {
    /// Opens the port `builder` describes (non-blocking, close-on-exec, with its line settings).
    pub fn open(builder: &tokio_serial::SerialPortBuilder) -> Result<Serial, tokio_serial::Error> {
        let port = mio_serial::SerialStream::open(builder)?;
        // SAFETY: the stream owns its fd, keeps it open until it is dropped with the AsyncFd, and
        // always returns that same fd.
        let port = unsafe { AsyncFd::register(port) }.map_err(std::io::Error::from)?;
        Ok(Serial { port })
    }
}

impl Drop for Serial {
    /// Discards what the device has not taken yet (a stalled line, or the last milliseconds of a
    /// request at a stop): `close` would otherwise wait for it on the runtime's thread, up to the
    /// driver's closing_wait (30 s by default).
    fn drop(&mut self) {
        // SAFETY: the fd is open until the AsyncFd, a field of self, is dropped after this.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.port.as_raw_fd()) };
        let _ = nix::sys::termios::tcflush(fd, nix::sys::termios::FlushArg::TCOFLUSH);
    }
}

impl AsRawFd for Serial {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.port.as_raw_fd()
    }
}

impl AsyncRead for &Serial {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut ready = ready!(self.port.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let offered = unfilled.len();
            match ready.try_io(|port| port.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < offered {
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for &Serial {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut ready = ready!(self.port.poll_write_ready(cx))?;
            match ready.try_io(|port| port.get_ref().write(bytes)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    /// Done at once: what was written is the kernel's, which sends it at the line's pace. Not
    /// `tcdrain`, as tokio-serial's flush is: that blocks the runtime's thread for the whole
    /// transmission (9 ms for a 9-byte poll at 9,600 baud, every poll, for every port and the broker
    /// alike) and, on a port whose device holds CTS off, for ever, past any timeout. So a reply timeout
    /// counts from when the kernel took the request.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// The owned port, for code that takes its transport by value (the Modbus client).
impl AsyncRead for Serial {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Serial {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The slave end of a fresh pty, opened as the gateway opens a port; the master is the device.
    fn pair() -> (tokio_serial::SerialStream, Serial) {
        let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
        let path = tokio_serial::SerialPort::name(&slave).expect("slave name");
        let serial = Serial::open(&tokio_serial::new(path, 9600)).expect("open the slave");
        (master, serial)
    }

    #[tokio::test]
    async fn every_byte_arrives_in_order_however_the_device_chunks_them() {
        let (mut device, serial) = pair();
        let sent: Vec<u8> = (0..20_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            // Chunks of 1 to 97 bytes, with yields between: reads often come short, and bytes often
            // arrive between a short read and the readiness it clears.
            let mut at = 0;
            let mut size = 1;
            while at < sent.len() {
                let end = (at + size).min(sent.len());
                AsyncWriteExt::write_all(&mut device, &sent[at..end]).await.unwrap();
                at = end;
                size = size % 97 + 1;
                if size % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            device
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < expected.len() {
            // Generous: a stall (readiness cleared while bytes wait) fails here instead of hanging.
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), (&serial).read(&mut buf))
                .await
                .expect("bytes keep arriving")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn what_is_written_reaches_the_device() {
        let (mut device, serial) = pair();
        (&serial).write_all(b"\xff\x01\x86\x00\x00\x00\x00\x00\x79").await.unwrap();
        (&serial).flush().await.unwrap();
        let mut got = [0u8; 9];
        AsyncReadExt::read_exact(&mut device, &mut got).await.unwrap();
        assert_eq!(&got, b"\xff\x01\x86\x00\x00\x00\x00\x00\x79");
    }
}
