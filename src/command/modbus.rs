//! A command's `modbus:`: a write to a slave on a Modbus port (functions 5, 6 and 16), with the
//! payload's value turned into a coil state or registers as the register map's reads decode them.

use serde::Deserialize;

use super::settings::Payload;
use crate::modbus::settings::{RegisterType, WordOrder};
use crate::serial::request::{ModbusOp, ModbusWrite};

/// A command's `modbus:`: which slave, which write, and how the payload's value becomes registers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusCommand {
    pub slave: u8,
    pub function: WriteFunction,
    pub address: u16,
    /// The payload value to write (default `value`: a plain payload or a JSON object's `value`).
    #[serde(default = "default_field")]
    pub field: String,
    #[serde(default, rename = "type")]
    pub kind: RegisterType,
    #[serde(default)]
    pub word_order: WordOrder,
    #[serde(default = "crate::settings::one")]
    pub scale: f64,
    #[serde(default)]
    pub add: f64,
}

fn default_field() -> String {
    "value".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFunction {
    /// Function 5: `on`/`off`, `true`/`false`, `1`/`0`.
    WriteCoil,
    /// Function 6: one 16-bit register.
    WriteRegister,
    /// Function 16: the registers of any `type` (two for 32-bit values).
    WriteRegisters,
}

impl ModbusCommand {
    /// The write for `payload`, or why it does not fit (then nothing is written).
    pub fn build(&self, payload: &Payload) -> Result<ModbusWrite, String> {
        let op = match self.function {
            WriteFunction::WriteCoil => {
                let on = match payload.text(&self.field).as_deref().map(str::to_ascii_lowercase).as_deref() {
                    Some("on" | "true" | "1") => true,
                    Some("off" | "false" | "0") => false,
                    Some(other) => return Err(format!("`{}` is `{other}`: a coil is `on` or `off`", self.field)),
                    None => return Err(payload.missing(&self.field)),
                };
                ModbusOp::Coil(self.address, on)
            }
            f => {
                let v = payload.number(&self.field)?;
                let words = crate::modbus::settings::encode(v, self.kind, self.word_order, self.scale, self.add)
                    .map_err(|e| format!("`{}` = {e}", self.field))?;
                match f {
                    WriteFunction::WriteRegister => ModbusOp::Register(self.address, words[0]),
                    _ => ModbusOp::Registers(self.address, words),
                }
            }
        };
        Ok(ModbusWrite { slave: self.slave, op })
    }
}
