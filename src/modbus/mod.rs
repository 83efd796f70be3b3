//! Modbus RTU master on a port: every `modbus.every`, each slave's registers are read (adjacent ones
//! in one request), decoded and handed to the publisher as one reading per slave, whose `slave` field
//! names it. One request at a time on the bus, with the silent interval RTU requires between frames;
//! a slave that does not answer costs the others at most `timeout` per period and is asked less
//! often while it stays silent, so a dead slave never stalls the bus.
//!
//! Commands with `modbus:` are written between polls (functions 5, 6, 16), one at a time like reads.
//!
//! The protocol is tokio-modbus's: framing, CRC-16/MODBUS, exception replies. It has no request
//! timeout of its own, so each request runs under `tokio::time::timeout` (dropping a request mid-way
//! is safe: the client clears its read buffer before the next one).

pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::prelude::{Slave, SlaveContext};

pub use settings::{Function, ModbusSettings, SlavePlan};

/// A Modbus port's settings and the read plan made from them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusPort {
    pub settings: ModbusSettings,
    pub plan: Vec<SlavePlan>,
}

use crate::decode::{Reading, Value};
use crate::serial::port::{PortEvent, PortSettings};
use crate::serial::reader::{availability, Channels};
use crate::serial::request::ModbusOp;

/// The longest a silent slave is skipped: 8 periods, so it is found again within 8 × `every`.
const MAX_SKIP: u32 = 8;

/// What one slave did, since start.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SlaveCounters {
    pub requests: u64,
    pub timeouts: u64,
    /// Exception replies (illegal address, device busy, …): the slave is there, the read failed.
    pub exceptions: u64,
    /// Replies that were not Modbus (bad CRC, wrong slave or function).
    pub errors: u64,
}

/// Per-slave counters of a Modbus port, published with the port's stats.
#[derive(Debug, Default)]
pub struct BusCounters(std::sync::Mutex<BTreeMap<String, SlaveCounters>>);

impl BusCounters {
    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("not poisoned").is_empty()
    }

    fn bump(&self, slave: &str, f: impl FnOnce(&mut SlaveCounters)) {
        f(self.0.lock().expect("not poisoned").entry(slave.to_string()).or_default());
    }

    pub fn snapshot(&self) -> BTreeMap<String, SlaveCounters> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl Serialize for BusCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.snapshot().serialize(s)
    }
}

/// The silent interval RTU needs between frames: 3.5 characters of 11 bits, and 1.75 ms above
/// 19,200 baud (Modbus over serial line §2.5.1.1).
pub fn interframe_gap(baud: u32) -> Duration {
    if baud > 19_200 || baud == 0 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * 11.0 / baud as f64)
    }
}

/// What a read returned.
enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

struct SlaveState {
    plan: SlavePlan,
    failures: u32,
    skip: u32,
}

/// Polls the bus on `transport` until shutdown (`Ok`) or the device fails (`Err`).
pub async fn poll_bus<T>(
    transport: T,
    port: &PortSettings,
    plan: &[SlavePlan],
    settings: &ModbusSettings,
    io: Channels<'_>,
) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Channels { tx, stats, shutdown, requests } = io;
    let mut ctx: Context = tokio_modbus::client::rtu::attach(transport);
    let gap = interframe_gap(port.baud_rate);
    let mut slaves: Vec<SlaveState> =
        plan.iter().map(|p| SlaveState { plan: p.clone(), failures: 0, skip: 0 }).collect();
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut online = false;
    let result = 'run: loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {}
            Some(req) = requests.recv() => {
                let Some(w) = req.modbus.clone() else {
                    req.answer(Err("a Modbus port takes Modbus writes only (`modbus:` in the command)".into()));
                    continue;
                };
                ctx.set_slave(Slave(w.slave));
                let write = async {
                    match &w.op {
                        ModbusOp::Coil(a, on) => ctx.write_single_coil(*a, *on).await,
                        ModbusOp::Register(a, v) => ctx.write_single_register(*a, *v).await,
                        ModbusOp::Registers(a, words) => ctx.write_multiple_registers(*a, words).await,
                    }
                };
                let outcome = match tokio::time::timeout(settings.timeout, write).await {
                    Ok(Ok(Ok(()))) => Ok(None),
                    Ok(Ok(Err(exception))) => Err(format!("slave {} answered exception {exception:?}", w.slave)),
                    Ok(Err(tokio_modbus::Error::Transport(e))) => {
                        req.answer(Err(format!("the bus failed: {e}")));
                        break 'run Err(e);
                    }
                    Ok(Err(e)) => Err(format!("not a Modbus reply: {e}")),
                    Err(_) => Err(format!("slave {} did not answer within {:?}", w.slave, settings.timeout)),
                };
                crate::serial::port::bump(&stats.writes, 1);
                req.answer(outcome);
                tokio::time::sleep(gap).await;
                continue;
            }
        }
        for s in slaves.iter_mut() {
            if s.skip > 0 {
                s.skip -= 1;
                continue;
            }
            let name = s.plan.name.clone();
            let mut fields = vec![(Arc::from("slave"), Value::Text(name.to_string()))];
            let mut answered = false;
            for block in &s.plan.blocks {
                ctx.set_slave(Slave(s.plan.id));
                stats.modbus.bump(&name, |c| c.requests += 1);
                let read = async {
                    use tokio_modbus::Result as R;
                    let words = |r: R<Vec<u16>>| r.map(|r| r.map(Words::Registers));
                    let bits = |r: R<Vec<bool>>| r.map(|r| r.map(Words::Bits));
                    match block.function {
                        Function::Holding => words(ctx.read_holding_registers(block.start, block.count).await),
                        Function::Input => words(ctx.read_input_registers(block.start, block.count).await),
                        Function::Coil => bits(ctx.read_coils(block.start, block.count).await),
                        Function::DiscreteInput => bits(ctx.read_discrete_inputs(block.start, block.count).await),
                    }
                };
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => break 'run Ok(()),
                    r = tokio::time::timeout(settings.timeout, read) => r,
                };
                match outcome {
                    Ok(Ok(Ok(Words::Registers(words)))) => {
                        answered = true;
                        for (r, offset) in &block.registers {
                            if let Some(v) = words.get(*offset as usize..).and_then(|w| settings::decode(r, w)) {
                                fields.push((Arc::from(r.name.as_str()), Value::Float(v)));
                            }
                        }
                    }
                    Ok(Ok(Ok(Words::Bits(bits)))) => {
                        answered = true;
                        for (r, offset) in &block.registers {
                            if let Some(b) = bits.get(*offset as usize) {
                                fields.push((Arc::from(r.name.as_str()), Value::Bool(*b)));
                            }
                        }
                    }
                    Ok(Ok(Err(exception))) => {
                        answered = true;
                        stats.modbus.bump(&name, |c| c.exceptions += 1);
                        tracing::debug!(port = %port.name, slave = %name, ?exception, start = block.start, "exception reply");
                    }
                    Ok(Err(tokio_modbus::Error::Transport(e))) => break 'run Err(e),
                    Ok(Err(e)) => {
                        stats.modbus.bump(&name, |c| c.errors += 1);
                        tracing::debug!(port = %port.name, slave = %name, error = %e, "not a Modbus reply");
                    }
                    Err(_) => {
                        stats.modbus.bump(&name, |c| c.timeouts += 1);
                        // The rest of this slave's blocks would time out too: leave it for this period.
                        tokio::time::sleep(gap).await;
                        break;
                    }
                }
                tokio::time::sleep(gap).await;
            }
            if answered {
                s.failures = 0;
                for t in &port.transforms {
                    t.apply(&mut fields);
                }
                if fields.len() > 1 {
                    crate::serial::port::bump(&stats.frames, 1);
                    let reading = Reading { port: port.name.clone(), fields, received: chrono::Utc::now() };
                    if tx.send(PortEvent::Reading(reading)).await.is_err() {
                        break 'run Ok(());
                    }
                }
                if !online {
                    online = true;
                    if !availability(tx, port, stats, true).await {
                        break 'run Ok(());
                    }
                }
            } else {
                s.failures += 1;
                s.skip = (1u32 << (s.failures - 1).min(3)).min(MAX_SKIP) - 1;
                if s.failures == settings.offline_after {
                    tracing::warn!(port = %port.name, slave = %name, id = s.plan.id, "slave did not answer {} reads in a row", s.failures);
                }
            }
        }
        if online && slaves.iter().all(|s| s.failures >= settings.offline_after) {
            online = false;
            if !availability(tx, port, stats, false).await {
                break Ok(());
            }
        }
    };
    if online {
        availability(tx, port, stats, false).await;
    }
    result
}
