//! Progress reports from long work (key generation, protection, evaluation): the library
//! says what it is doing, the CLI decides how (and whether) to show it.

pub trait Progress {
    /// A new stage of the work begins.
    fn stage(&self, what: &str);
    /// The work has this many steps in all.
    fn total(&self, steps: u64);
    /// Steps done.
    fn advance(&self, steps: u64);
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: &str) {}
    fn total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}
