//! `rs485:` for a UART wired to an RS-485 transceiver whose direction pin is the UART's RTS (a Pi's
//! GPIO UART with a MAX485, say): the kernel's RS-485 mode (`TIOCSRS485`) then raises RTS while it
//! sends and drops it after the last bit, with no timing left to user space. USB adapters with
//! automatic direction control (nearly all) need none of this. libc has the ioctl number but not the
//! `struct serial_rs485` of `<linux/serial.h>`, so it is declared here as the kernel's ABI has it.

use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rs485Settings {
    /// RTS high while sending (the usual wiring: RTS to the transceiver's DE and /RE); false inverts it.
    #[serde(default = "yes")]
    pub rts_on_send: bool,
    /// Held before the first bit and after the last, for slow transceivers (whole milliseconds).
    #[serde(default, with = "humantime_serde")]
    pub delay_before_send: Duration,
    #[serde(default, with = "humantime_serde")]
    pub delay_after_send: Duration,
}

fn yes() -> bool {
    true
}

/// `struct serial_rs485` (include/uapi/linux/serial.h): 32 bytes.
#[repr(C)]
struct SerialRs485 {
    flags: u32,
    delay_rts_before_send: u32,
    delay_rts_after_send: u32,
    padding: [u32; 5],
}

const SER_RS485_ENABLED: u32 = 1 << 0;
const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;
const SER_RS485_RTS_AFTER_SEND: u32 = 1 << 2;

/// Turns on the kernel's RS-485 mode on an open serial device.
pub fn enable(device: &impl AsRawFd, s: &Rs485Settings) -> std::io::Result<()> {
    let flags = SER_RS485_ENABLED | if s.rts_on_send { SER_RS485_RTS_ON_SEND } else { SER_RS485_RTS_AFTER_SEND };
    let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
    let conf = SerialRs485 {
        flags,
        delay_rts_before_send: ms(s.delay_before_send),
        delay_rts_after_send: ms(s.delay_after_send),
        padding: [0; 5],
    };
    // SAFETY: `conf` is a valid `struct serial_rs485` that outlives the call; the kernel only reads it
    // (and fills in what it supports, which we do not use).
    let r = unsafe { libc::ioctl(device.as_raw_fd(), libc::TIOCSRS485 as _, &conf as *const SerialRs485) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
