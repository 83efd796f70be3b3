//! A simulated Eastron SDM120 energy meter on a Modbus RTU bus, served by tokio-modbus's RTU server:
//! input registers (function 4) as the SDM120's register map has them, 32-bit floats in ABCD order:
//! voltage 0x0000, current 0x0006, active power 0x000C, frequency 0x0046, total energy 0x0156. Only
//! the slave ids it is given answer; a request for any other id gets no reply at all, as on a bus
//! where that slave is dead. Registers outside the map get exception 2 (illegal data address).
//! Holding registers (function 3, written with 6 and 16) are a plain store of 16 words, as the
//! meter's settings (demand period, baud rate, …) are; coil 0 (function 5) is a relay.

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::rtu::Server;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

/// The highest register the meter has (energy's second word is 0x0157).
const LAST_REGISTER: u16 = 0x0157;

/// Holding registers the meter keeps: 0 to 15.
const HOLDING: usize = 16;

struct Meter {
    answering: Vec<u8>,
    reads: AtomicU64,
    holding: Mutex<[u16; HOLDING]>,
    relay: AtomicBool,
}

impl Meter {
    /// The value of the float that starts at `address`, if one does.
    fn value(&self, address: u16) -> f32 {
        let n = self.reads.load(Ordering::Relaxed) as f32;
        match address {
            0x0000 => 230.0 + (n % 10.0) * 0.1,
            0x0006 => 1.5,
            0x000C => 345.0,
            0x0046 => 50.0,
            0x0156 => 1234.5 + n * 0.01,
            _ => 0.0,
        }
    }

    fn words(&self, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || u32::from(start) + u32::from(count) > u32::from(LAST_REGISTER) + 1 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok((start..start + count)
            .map(|r| {
                let bits = self.value(r & !1).to_bits();
                if r % 2 == 0 {
                    (bits >> 16) as u16
                } else {
                    bits as u16
                }
            })
            .collect())
    }
}

impl tokio_modbus::server::Service for Meter {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        if !self.answering.contains(&req.slave) {
            return ready(Ok(None));
        }
        let holding = |start: u16, count: usize| {
            let end = start as usize + count;
            (count > 0 && end <= HOLDING).then_some(start as usize..end).ok_or(ExceptionCode::IllegalDataAddress)
        };
        ready(match req.request {
            Request::ReadInputRegisters(start, count) => {
                self.words(start, count).map(|w| Some(Response::ReadInputRegisters(w)))
            }
            Request::ReadHoldingRegisters(start, count) => holding(start, count as usize)
                .map(|r| Some(Response::ReadHoldingRegisters(self.holding.lock().expect("not poisoned")[r].to_vec()))),
            Request::WriteSingleRegister(a, v) => holding(a, 1).map(|r| {
                self.holding.lock().expect("not poisoned")[r.start] = v;
                Some(Response::WriteSingleRegister(a, v))
            }),
            Request::WriteMultipleRegisters(a, words) => holding(a, words.len()).map(|r| {
                self.holding.lock().expect("not poisoned")[r].copy_from_slice(&words);
                Some(Response::WriteMultipleRegisters(a, words.len() as u16))
            }),
            Request::WriteSingleCoil(0, on) => {
                self.relay.store(on, Ordering::Relaxed);
                Ok(Some(Response::WriteSingleCoil(0, on)))
            }
            Request::WriteSingleCoil(..) => Err(ExceptionCode::IllegalDataAddress),
            Request::ReadCoils(0, 1) => Ok(Some(Response::ReadCoils(vec![self.relay.load(Ordering::Relaxed)]))),
            Request::ReadCoils(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serves the meter as slave ids `answering` on `serial` until `shutdown`.
pub async fn serve(serial: SerialStream, answering: Vec<u8>, shutdown: CancellationToken) -> std::io::Result<()> {
    let meter =
        Meter { answering, reads: AtomicU64::new(0), holding: Mutex::new([0; HOLDING]), relay: AtomicBool::new(false) };
    Server::new(serial).serve_until(meter, async move { shutdown.cancelled().await }).await.map(|_| ())
}
