//! Every fuzz target of `hedge::fuzz`, chosen by HEDGE_FUZZ_TARGET (one instrumented binary,
//! linked once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static TARGET: OnceLock<fn(&[u8])> = OnceLock::new();

fuzz_target!(init: hedge::fuzz::prepare(), |data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        let name = std::env::var("HEDGE_FUZZ_TARGET").unwrap_or_default();
        hedge::fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .unwrap_or_else(|| panic!("HEDGE_FUZZ_TARGET={name:?} names no target"))
    });
    target(data);
});
