//! The CPU features this build was compiled for, checked at start-up so that a machine
//! without them gets a message instead of an illegal-instruction crash.

/// What this build needs and this CPU lacks, if anything.
pub(crate) fn missing_features() -> Option<String> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let missing: Vec<&str> = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Some(format!(
                "this build targets x86-64-v3 and the CPU lacks {}; rebuild with \
                 RUSTFLAGS=\"-C target-cpu=x86-64\"",
                missing.join(", ")
            ));
        }
    }
    None
}

/// Exit with a message when [`missing_features`] finds any.
pub fn require_build_features() {
    if let Some(message) = missing_features() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_build_machine_runs_its_own_build() {
        assert_eq!(super::missing_features(), None);
    }
}
