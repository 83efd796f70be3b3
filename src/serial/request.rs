//! What a port is asked to write: bytes built from a command or a poll, and whether a reply must
//! come back. The port task is the device's only writer, so requests never interleave with each
//! other, with a poll cycle, or with a half-written frame.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

/// How long one request's write may take: a tty takes 9 bytes at 9600 baud in 10 ms; a device that
/// takes nothing for this long (flow control stuck, adapter gone) fails the request, not the port.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A reply a request waits for: the next frame (as the port's framing and checksum cut it) that
/// starts with `starts_with`, within `timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplySpec {
    pub timeout: Duration,
    pub starts_with: Bytes,
}

impl ReplySpec {
    pub fn matches(&self, frame: &[u8]) -> bool {
        frame.starts_with(&self.starts_with)
    }
}

/// What became of a request: the reply frame when one was expected, or why it failed.
pub type Outcome = Result<Option<Bytes>, String>;

/// A write to a Modbus slave (functions 5, 6 and 16), for a port that is a Modbus bus.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusWrite {
    pub slave: u8,
    pub op: ModbusOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModbusOp {
    /// Function 5.
    Coil(u16, bool),
    /// Function 6.
    Register(u16, u16),
    /// Function 16.
    Registers(u16, Vec<u16>),
}

/// One write to a port.
#[derive(Debug)]
pub struct PortRequest {
    pub bytes: Bytes,
    /// Instead of `bytes`, on a Modbus port.
    pub modbus: Option<ModbusWrite>,
    pub reply: Option<ReplySpec>,
    pub done: oneshot::Sender<Outcome>,
}

impl PortRequest {
    pub fn new(bytes: Bytes, reply: Option<ReplySpec>) -> (PortRequest, oneshot::Receiver<Outcome>) {
        let (done, rx) = oneshot::channel();
        (PortRequest { bytes, modbus: None, reply, done }, rx)
    }

    pub fn modbus(write: ModbusWrite) -> (PortRequest, oneshot::Receiver<Outcome>) {
        let (done, rx) = oneshot::channel();
        (PortRequest { bytes: Bytes::new(), modbus: Some(write), reply: None, done }, rx)
    }

    pub fn answer(self, outcome: Outcome) {
        // The asker may have gone (a reload, a shutdown): nothing to tell then.
        let _ = self.done.send(outcome);
    }
}
