//! The pty pairs the example programs hand to gateways and contenders, opened close-on-exec.

use tokio_serial::SerialStream;

/// A pty pair, both ends close-on-exec. serialport opens them without O_CLOEXEC: every process the
/// example starts afterwards (gateways, Mosquitto, the floor's mosquitto_pub) would inherit a copy of
/// each master, and dropping ours would then not hang the pty up. The flag is set just after the
/// open: a child spawned in between could still inherit them (tests/support opens its ptys with
/// O_CLOEXEC for that reason; these programs measure, where one stray copy changes nothing).
pub fn pair() -> (SerialStream, SerialStream) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let (master, slave) = SerialStream::pair().expect("pty pair");
    for end in [&master, &slave] {
        // SAFETY: the fd belongs to `end`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(end.as_raw_fd()) };
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).expect("set FD_CLOEXEC");
    }
    (master, slave)
}
