//! Home Assistant's sensor device classes: the units and state classes it accepts with each, as in
//! its `sensor` integration (`DEVICE_CLASS_UNITS`, `DEVICE_CLASS_STATE_CLASSES`). Its MQTT integration
//! refuses a discovery document whose unit or state class does not fit the device class, so `check`
//! refuses it first, with the valid choices.

/// The state classes (`measurement`, `total`, `total_increasing`).
pub const STATE_CLASSES: &[&str] = &["measurement", "total", "total_increasing"];

const M: &[&str] = &["measurement"];
const ALL: &[&str] = STATE_CLASSES;
const TOTALS: &[&str] = &["total", "total_increasing"];
const NONE: &[&str] = &[];

const PRESSURE: &[&str] = &["Pa", "hPa", "kPa", "MPa", "bar", "cbar", "mbar", "mmHg", "inHg", "inH₂O", "psi"];
const ENERGY: &[&str] =
    &["J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"];
const LENGTH: &[&str] = &["mm", "cm", "m", "km", "in", "ft", "yd", "mi", "nmi"];
const VOLUME: &[&str] = &["L", "mL", "m³", "ft³", "CCF", "gal", "fl. oz."];
const SPEED: &[&str] = &["Beaufort", "ft/s", "in/s", "m/s", "km/h", "kn", "mph", "mm/s"];
const FLUX: &[&str] = &["in/d", "in/h", "mm/d", "mm/h"];
const MICROGRAMS: &[&str] = &["μg/m³"];

/// One device class: the units it takes (`None` in the list: it may also have none) and its state
/// classes (empty: it may have none).
pub struct DeviceClass {
    pub name: &'static str,
    pub units: Vec<Option<&'static str>>,
    pub state_classes: &'static [&'static str],
}

macro_rules! units {
    ($($u:expr),*) => { vec![$(Some($u)),*] };
}

/// Every sensor device class. Units of a family are listed once in the constants above.
pub fn all() -> Vec<DeviceClass> {
    let some = |list: &[&'static str]| -> Vec<Option<&'static str>> { list.iter().map(|u| Some(*u)).collect() };
    vec![
        DeviceClass { name: "date", units: vec![None], state_classes: NONE },
        DeviceClass { name: "enum", units: vec![None], state_classes: NONE },
        DeviceClass { name: "timestamp", units: vec![None], state_classes: NONE },
        DeviceClass { name: "apparent_power", units: units!("mVA", "VA", "kVA"), state_classes: M },
        DeviceClass { name: "aqi", units: vec![None], state_classes: M },
        DeviceClass {
            name: "area",
            units: units!("m²", "cm²", "km²", "mm²", "in²", "ft²", "yd²", "mi²", "ac", "ha"),
            state_classes: ALL,
        },
        DeviceClass { name: "atmospheric_pressure", units: some(PRESSURE), state_classes: M },
        DeviceClass { name: "battery", units: units!("%"), state_classes: M },
        DeviceClass { name: "blood_glucose_concentration", units: units!("mg/dL", "mmol/L"), state_classes: M },
        DeviceClass { name: "carbon_monoxide", units: units!("ppm", "mg/m³", "μg/m³"), state_classes: M },
        DeviceClass { name: "carbon_dioxide", units: units!("ppm"), state_classes: M },
        DeviceClass { name: "conductivity", units: units!("S/cm", "mS/cm", "μS/cm"), state_classes: M },
        DeviceClass { name: "current", units: units!("A", "mA"), state_classes: M },
        DeviceClass {
            name: "data_rate",
            units: units!(
                "bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s", "KiB/s", "MiB/s", "GiB/s"
            ),
            state_classes: M,
        },
        DeviceClass {
            name: "data_size",
            units: units!(
                "bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB", "KiB", "MiB",
                "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"
            ),
            state_classes: ALL,
        },
        DeviceClass { name: "distance", units: some(LENGTH), state_classes: ALL },
        DeviceClass { name: "duration", units: units!("d", "h", "min", "s", "ms", "μs"), state_classes: ALL },
        DeviceClass { name: "energy", units: some(ENERGY), state_classes: TOTALS },
        DeviceClass { name: "energy_distance", units: units!("kWh/100km", "mi/kWh", "km/kWh"), state_classes: M },
        DeviceClass { name: "energy_storage", units: some(ENERGY), state_classes: M },
        DeviceClass { name: "frequency", units: units!("Hz", "kHz", "MHz", "GHz"), state_classes: M },
        DeviceClass { name: "gas", units: units!("m³", "ft³", "CCF", "L"), state_classes: TOTALS },
        DeviceClass { name: "humidity", units: units!("%"), state_classes: M },
        DeviceClass { name: "illuminance", units: units!("lx"), state_classes: M },
        DeviceClass { name: "irradiance", units: units!("W/m²", "BTU/(h⋅ft²)"), state_classes: M },
        DeviceClass { name: "moisture", units: units!("%"), state_classes: M },
        DeviceClass { name: "nitrogen_dioxide", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "nitrogen_monoxide", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "nitrous_oxide", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "ozone", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "ph", units: vec![None], state_classes: M },
        DeviceClass { name: "pm1", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "pm10", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "pm25", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "power_factor", units: vec![Some("%"), None], state_classes: M },
        DeviceClass { name: "power", units: units!("mW", "W", "kW", "MW", "GW", "TW", "BTU/h"), state_classes: M },
        DeviceClass { name: "precipitation", units: units!("cm", "in", "mm"), state_classes: ALL },
        DeviceClass { name: "precipitation_intensity", units: some(FLUX), state_classes: M },
        DeviceClass { name: "pressure", units: some(PRESSURE), state_classes: M },
        DeviceClass { name: "reactive_power", units: units!("mvar", "var", "kvar"), state_classes: M },
        DeviceClass { name: "signal_strength", units: units!("dB", "dBm"), state_classes: M },
        DeviceClass { name: "sound_pressure", units: units!("dB", "dBA"), state_classes: M },
        DeviceClass { name: "speed", units: some(&[SPEED, FLUX].concat()), state_classes: M },
        DeviceClass { name: "sulphur_dioxide", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "temperature", units: units!("°C", "°F", "K"), state_classes: M },
        DeviceClass { name: "temperature_delta", units: units!("°C", "°F", "K"), state_classes: M },
        DeviceClass { name: "volatile_organic_compounds", units: some(MICROGRAMS), state_classes: M },
        DeviceClass { name: "volatile_organic_compounds_parts", units: units!("ppm", "ppb"), state_classes: M },
        DeviceClass { name: "voltage", units: units!("μV", "mV", "V", "kV", "MV"), state_classes: M },
        DeviceClass { name: "volume", units: some(VOLUME), state_classes: TOTALS },
        DeviceClass { name: "volume_storage", units: some(VOLUME), state_classes: M },
        DeviceClass {
            name: "volume_flow_rate",
            units: units!("m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s"),
            state_classes: M,
        },
        DeviceClass { name: "water", units: units!("m³", "ft³", "CCF", "gal", "L"), state_classes: TOTALS },
        DeviceClass { name: "weight", units: units!("μg", "mg", "g", "kg", "oz", "lb", "st"), state_classes: ALL },
        DeviceClass { name: "wind_direction", units: units!("°"), state_classes: NONE },
        DeviceClass { name: "wind_speed", units: some(SPEED), state_classes: M },
    ]
}

/// Home Assistant spells micro with the Greek mu (U+03BC); a keyboard gives the micro sign (U+00B5).
/// Both are accepted and the Greek one is published.
pub fn normalize_unit(unit: &str) -> String {
    unit.replace('\u{00B5}', "\u{03BC}")
}

/// Why `unit` and `state_class` do not fit `device_class`, if they do not.
pub fn check(device_class: &str, unit: Option<&str>, state_class: Option<&str>) -> Result<(), (&'static str, String)> {
    let classes = all();
    let Some(class) = classes.iter().find(|c| c.name == device_class) else {
        let names: Vec<&str> = classes.iter().map(|c| c.name).collect();
        return Err((
            "device_class",
            crate::settings::unknown("Home Assistant sensor device class", device_class, &names),
        ));
    };
    let unit = unit.map(normalize_unit);
    if !class.units.contains(&unit.as_deref()) {
        let valid: Vec<String> =
            class.units.iter().map(|u| u.map(|u| format!("`{u}`")).unwrap_or_else(|| "none".into())).collect();
        let said = unit.map(|u| format!("`{u}`")).unwrap_or_else(|| "no unit".into());
        return Err((
            "unit",
            format!("Home Assistant refuses {said} for device class `{device_class}` (valid: {})", valid.join(", ")),
        ));
    }
    if let Some(sc) = state_class {
        if !class.state_classes.contains(&sc) {
            let valid =
                if class.state_classes.is_empty() { "none".to_string() } else { class.state_classes.join(", ") };
            return Err((
                "state_class",
                format!("Home Assistant refuses state class `{sc}` for device class `{device_class}` (valid: {valid})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_state_classes_follow_the_device_class() {
        assert!(check("pm25", Some("µg/m³"), Some("measurement")).is_ok(), "micro sign accepted");
        assert!(check("pm25", Some("μg/m³"), None).is_ok());
        assert_eq!(check("pm25", Some("ppm"), None).unwrap_err().0, "unit");
        assert_eq!(check("temperature", None, None).unwrap_err().0, "unit", "a temperature needs its unit");
        assert!(check("aqi", None, Some("measurement")).is_ok());
        assert_eq!(check("energy", Some("kWh"), Some("measurement")).unwrap_err().0, "state_class");
        assert!(check("energy", Some("kWh"), Some("total_increasing")).is_ok());
        let (key, why) = check("temprature", Some("°C"), None).unwrap_err();
        assert_eq!(key, "device_class");
        assert!(why.contains("did you mean `temperature`?"), "{why}");
    }
}
