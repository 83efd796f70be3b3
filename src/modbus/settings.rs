//! A port's `modbus:` section: the slaves on an RS-485 bus, their registers, how often they are read,
//! and the plan that reads adjacent registers in one request (within the 125-register limit of
//! functions 3 and 4) and splits the answer among them.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::decode::{encode_binary, BinaryType};
use crate::settings::Problems;

/// Most registers one read may ask for (Modbus application protocol §6.3, §6.4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Most coils or discrete inputs one read may ask for (§6.1, §6.2).
pub const MAX_BITS_PER_READ: u16 = 2000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSettings {
    /// Every slave is read once per period (a failing one less often: see `backoff`).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How long one request waits for its answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Reads in a row a slave fails before it counts as gone; the port is `offline` when all are.
    #[serde(default = "default_offline_after")]
    pub offline_after: u32,
    /// Unused registers a read may span to join two wanted ones (0: never). Some devices answer an
    /// exception for registers they do not have; set 0 for those.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    pub slaves: Vec<SlaveSettings>,
}

fn default_timeout() -> Duration {
    // A slave answers within a few character times of 9600 baud; half a second is what most meter
    // datasheets allow, and what a dead slave then costs the others per cycle.
    Duration::from_millis(500)
}

fn default_offline_after() -> u32 {
    3
}

fn default_max_gap() -> u16 {
    // 16 unused registers are 32 bytes, ~35 ms at 9600 baud: less than one more request's turnaround.
    16
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaveSettings {
    /// The slave address, 1 to 247.
    pub id: u8,
    /// Fills the `slave` field of its readings; default `slave{id}`.
    #[serde(default)]
    pub name: Option<String>,
    pub registers: Vec<RegisterSettings>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSettings {
    pub name: String,
    /// The first register's address, as the device's register map numbers it from 0.
    pub address: u16,
    #[serde(default)]
    pub function: Function,
    #[serde(default, rename = "type")]
    pub kind: RegisterType,
    /// For 32-bit values: how the device orders the four bytes (ABCD big-endian, CDAB word-swapped, …).
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "crate::settings::one")]
    pub scale: f64,
    #[serde(default)]
    pub add: f64,
}

/// Which table a register is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Function 3, read holding registers.
    #[default]
    Holding,
    /// Function 4, read input registers.
    Input,
    /// Function 1, read coils: `true`/`false`.
    Coil,
    /// Function 2, read discrete inputs: `true`/`false`.
    DiscreteInput,
}

impl Function {
    /// Most registers (or bits) one read may ask for (§6.1-6.4).
    pub fn max_per_read(self) -> u16 {
        match self {
            Function::Holding | Function::Input => MAX_REGISTERS_PER_READ,
            Function::Coil | Function::DiscreteInput => MAX_BITS_PER_READ,
        }
    }

    pub fn reads_bits(self) -> bool {
        matches!(self, Function::Coil | Function::DiscreteInput)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterType {
    #[default]
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl RegisterSettings {
    /// Registers (or bits) it occupies.
    pub fn width(&self) -> u16 {
        if self.function.reads_bits() {
            1
        } else {
            self.kind.registers()
        }
    }
}

impl RegisterType {
    pub fn registers(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 => 1,
            _ => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    #[default]
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

/// One read request and the registers it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub function: Function,
    pub start: u16,
    pub count: u16,
    /// (register, its offset in the block).
    pub registers: Vec<(RegisterSettings, u16)>,
}

/// What to read from one slave each period.
#[derive(Debug, Clone, PartialEq)]
pub struct SlavePlan {
    pub id: u8,
    pub name: Arc<str>,
    pub blocks: Vec<Block>,
}

impl ModbusSettings {
    /// The read plan, if the settings hold up; problems keyed relative to `modbus:`.
    pub fn plan(&self, p: &mut Problems) -> Option<Vec<SlavePlan>> {
        let mut found = Problems::default();
        if self.every.is_zero() || self.timeout.is_zero() {
            found.add("", "`every` and `timeout` must be longer than 0s");
        }
        if self.offline_after == 0 {
            found.add("offline_after", "must be at least 1");
        }
        if self.slaves.is_empty() {
            found.add("slaves", "name at least one slave: `- { id: 1, registers: [...] }`");
        }
        let mut plans: Vec<SlavePlan> = Vec::new();
        for (i, s) in self.slaves.iter().enumerate() {
            if !(1..=247).contains(&s.id) {
                found.add(format!("slaves[{i}].id"), format!("{} is not a slave address: use 1 to 247", s.id));
            }
            if plans.iter().any(|o| o.id == s.id) {
                found.add(format!("slaves[{i}].id"), format!("slave {} is listed twice", s.id));
            }
            let mut names = std::collections::HashSet::new();
            for (j, r) in s.registers.iter().enumerate() {
                if !names.insert(r.name.as_str()) || r.name == "slave" {
                    found.add(
                        format!("slaves[{i}].registers[{j}].name"),
                        format!("`{}` is used twice (or is `slave`, which names the slave)", r.name),
                    );
                }
                if r.scale == 0.0 {
                    found.add(format!("slaves[{i}].registers[{j}].scale"), "must not be 0");
                }
                if r.function.reads_bits() && r.kind != RegisterType::U16 {
                    found.add(
                        format!("slaves[{i}].registers[{j}].type"),
                        "coils and discrete inputs are bits: leave out `type`",
                    );
                }
                if u32::from(r.address) + u32::from(r.width()) > 65536 {
                    found.add(format!("slaves[{i}].registers[{j}].address"), "runs past register 65535");
                }
            }
            let name = s.name.clone().unwrap_or_else(|| format!("slave{}", s.id));
            plans.push(SlavePlan {
                id: s.id,
                name: Arc::from(name.as_str()),
                blocks: blocks(&s.registers, self.max_gap),
            });
        }
        let ok = found.is_empty();
        for (k, m) in found.into_list() {
            p.add(k, m);
        }
        ok.then_some(plans)
    }

    /// Every field a reading of this bus can carry.
    pub fn field_names(&self) -> Vec<String> {
        let mut names = vec!["slave".to_string()];
        for s in &self.slaves {
            for r in &s.registers {
                if !names.contains(&r.name) {
                    names.push(r.name.clone());
                }
            }
        }
        names
    }
}

/// Registers grouped into reads: per function, by address, joined across gaps up to `max_gap` and
/// up to the function's limit per read.
fn blocks(registers: &[RegisterSettings], max_gap: u16) -> Vec<Block> {
    let mut sorted: Vec<&RegisterSettings> = registers.iter().collect();
    sorted.sort_by_key(|r| (r.function, r.address));
    let mut out: Vec<Block> = Vec::new();
    for r in sorted {
        let end = |b: &Block| u32::from(b.start) + u32::from(b.count);
        let r_end = u32::from(r.address) + u32::from(r.width());
        let joins = out.last().is_some_and(|b| {
            b.function == r.function
                && u32::from(r.address) <= end(b) + u32::from(max_gap)
                && r_end.max(end(b)) - u32::from(b.start) <= u32::from(r.function.max_per_read())
        });
        if joins {
            let b = out.last_mut().expect("checked");
            b.count = (r_end.max(end(b)) - u32::from(b.start)) as u16;
            b.registers.push((r.clone(), r.address - b.start));
        } else {
            out.push(Block {
                function: r.function,
                start: r.address,
                count: r.kind.registers(),
                registers: vec![(r.clone(), 0)],
            });
        }
    }
    out
}

/// A register's value from the words of its block.
pub fn decode(r: &RegisterSettings, words: &[u16]) -> Option<f64> {
    let w = words.get(..r.kind.registers() as usize)?;
    let raw = match r.kind {
        RegisterType::U16 => w[0] as f64,
        RegisterType::I16 => w[0] as i16 as f64,
        _ => {
            let [a, b] = w[0].to_be_bytes();
            let [c, d] = w[1].to_be_bytes();
            let bytes = match r.word_order {
                WordOrder::Abcd => [a, b, c, d],
                WordOrder::Cdab => [c, d, a, b],
                WordOrder::Badc => [b, a, d, c],
                WordOrder::Dcba => [d, c, b, a],
            };
            match r.kind {
                RegisterType::U32 => u32::from_be_bytes(bytes) as f64,
                RegisterType::I32 => i32::from_be_bytes(bytes) as f64,
                // Through its shortest decimal form: 230.1f32 publishes as 230.1, not 230.10000610351563.
                _ => f32::from_be_bytes(bytes).to_string().parse().unwrap_or(f64::NAN),
            }
        }
    };
    Some(raw * r.scale + r.add)
}

/// `v` as the registers of a `kind` value in `order`, after `add` is taken off and the rest divided by
/// `scale` (the inverse of `decode`); an integer type takes the nearest whole number and must hold it.
pub fn encode(v: f64, kind: RegisterType, order: WordOrder, scale: f64, add: f64) -> Result<Vec<u16>, String> {
    let x = (v - add) / scale;
    if !x.is_finite() {
        return Err(format!("{v} is not a finite number"));
    }
    let wire = match kind {
        RegisterType::U16 => BinaryType::U16,
        RegisterType::I16 => BinaryType::I16,
        RegisterType::U32 => BinaryType::U32,
        RegisterType::I32 => BinaryType::I32,
        RegisterType::F32 => BinaryType::F32,
    };
    let be =
        encode_binary(x, wire).map_err(|(lo, hi)| format!("{v} does not fit {kind:?} ({lo}..={hi})").to_lowercase())?;
    let bytes = match (be.as_slice(), order) {
        ([a, b, c, d], WordOrder::Cdab) => vec![*c, *d, *a, *b],
        ([a, b, c, d], WordOrder::Badc) => vec![*b, *a, *d, *c],
        ([a, b, c, d], WordOrder::Dcba) => vec![*d, *c, *b, *a],
        _ => be,
    };
    Ok(bytes.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, address: u16, kind: RegisterType) -> RegisterSettings {
        RegisterSettings {
            name: name.into(),
            address,
            function: Function::Input,
            kind,
            word_order: WordOrder::Abcd,
            scale: 1.0,
            add: 0.0,
        }
    }

    #[test]
    fn adjacent_registers_are_read_together_within_the_limit() {
        // An SDM120: voltage 0x00, current 0x06, power 0x0C, energy 0x156, all f32.
        let regs = [
            reg("v", 0, RegisterType::F32),
            reg("i", 6, RegisterType::F32),
            reg("p", 12, RegisterType::F32),
            reg("e", 0x156, RegisterType::F32),
        ];
        let b = blocks(&regs, 16);
        assert_eq!(b.iter().map(|b| (b.start, b.count)).collect::<Vec<_>>(), [(0, 14), (0x156, 2)]);
        assert_eq!(
            b[0].registers.iter().map(|(r, o)| (r.name.as_str(), *o)).collect::<Vec<_>>(),
            [("v", 0), ("i", 6), ("p", 12)]
        );
        assert_eq!(blocks(&regs, 0).len(), 4, "max_gap 0: only touching registers join");
        // 42 registers of one device: 1 request, not 42 (nor 13).
        let many: Vec<_> = (0..42).map(|i| reg(&format!("r{i}"), i * 2, RegisterType::F32)).collect();
        assert_eq!(blocks(&many, 16).len(), 1);
        let too_many: Vec<_> = (0..100).map(|i| reg(&format!("r{i}"), i * 2, RegisterType::F32)).collect();
        let b = blocks(&too_many, 16);
        assert!(
            b.iter().all(|b| b.count <= MAX_REGISTERS_PER_READ) && b.len() == 2,
            "{:?}",
            b.iter().map(|b| b.count).collect::<Vec<_>>()
        );
    }

    #[test]
    fn encode_is_decodes_inverse_in_every_word_order() {
        for order in [WordOrder::Abcd, WordOrder::Cdab, WordOrder::Badc, WordOrder::Dcba] {
            let mut r = reg("v", 0, RegisterType::F32);
            r.word_order = order;
            let words = encode(230.5, RegisterType::F32, order, 1.0, 0.0).unwrap();
            assert_eq!(decode(&r, &words), Some(230.5), "{order:?}");
        }
        assert_eq!(encode(-20.0, RegisterType::I16, WordOrder::Abcd, 0.1, 0.0).unwrap(), [0xFF38]);
        assert_eq!(
            encode(70000.0, RegisterType::U16, WordOrder::Abcd, 1.0, 0.0).unwrap_err(),
            "70000 does not fit u16 (0..=65535)"
        );
    }

    #[test]
    fn word_orders() {
        // 230.5 as f32 is 0x43668000.
        let mut r = reg("v", 0, RegisterType::F32);
        assert_eq!(decode(&r, &[0x4366, 0x8000]), Some(230.5));
        r.word_order = WordOrder::Cdab;
        assert_eq!(decode(&r, &[0x8000, 0x4366]), Some(230.5));
        r.word_order = WordOrder::Badc;
        assert_eq!(decode(&r, &[0x6643, 0x0080]), Some(230.5));
        r.word_order = WordOrder::Dcba;
        assert_eq!(decode(&r, &[0x0080, 0x6643]), Some(230.5));
        let mut t = reg("t", 0, RegisterType::I16);
        t.scale = 0.1;
        assert_eq!(decode(&t, &[0xFF38]), Some(-20.0));
    }
}
