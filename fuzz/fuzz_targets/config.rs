//! The config loader on arbitrary text: never panics, and every refusal names at least one problem.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(errors) = ser2mqtt::config::parse(text, Path::new("fuzz.yaml")) {
        assert!(!errors.to_string().is_empty());
    }
});
