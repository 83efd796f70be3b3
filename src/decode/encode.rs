//! The binary decoder's inverse, for what the gateway writes (command fields, Modbus registers): a
//! number as a wire type, big-endian.

use super::{binary_width, BinaryType};

/// `x` as `kind`, big-endian. An integer type takes the nearest whole number, which must lie in the
/// type's range; if it does not, the range is returned for the caller's message. `x` must be finite.
pub fn encode_binary(x: f64, kind: BinaryType) -> Result<Vec<u8>, (f64, f64)> {
    let r = x.round();
    let fits = |lo: f64, hi: f64| if (lo..=hi).contains(&r) { Ok(()) } else { Err((lo, hi)) };
    let be = match kind {
        BinaryType::U8 => fits(0.0, u8::MAX as f64).map(|_| vec![r as u8])?,
        BinaryType::I8 => fits(i8::MIN as f64, i8::MAX as f64).map(|_| (r as i8).to_be_bytes().to_vec())?,
        BinaryType::U16 => fits(0.0, u16::MAX as f64).map(|_| (r as u16).to_be_bytes().to_vec())?,
        BinaryType::I16 => fits(i16::MIN as f64, i16::MAX as f64).map(|_| (r as i16).to_be_bytes().to_vec())?,
        BinaryType::U32 => fits(0.0, u32::MAX as f64).map(|_| (r as u32).to_be_bytes().to_vec())?,
        BinaryType::I32 => fits(i32::MIN as f64, i32::MAX as f64).map(|_| (r as i32).to_be_bytes().to_vec())?,
        BinaryType::U64 => fits(0.0, u64::MAX as f64).map(|_| (r as u64).to_be_bytes().to_vec())?,
        BinaryType::I64 => fits(i64::MIN as f64, i64::MAX as f64).map(|_| (r as i64).to_be_bytes().to_vec())?,
        BinaryType::F32 => (x as f32).to_be_bytes().to_vec(),
        BinaryType::F64 => x.to_be_bytes().to_vec(),
    };
    debug_assert_eq!(be.len(), binary_width(kind));
    Ok(be)
}
