//! How much room a configuration leaves beyond what it is predicted to need, and when a faster
//! configuration counts as just as fast: what ranking (rule 4b) and the reasons share.

use super::types::Candidate;

/// How much slower than the fastest a configuration may be and still count as just as fast: the
/// step-time model's worst error on the real code (plan/speed.rs: worst 7.1%, mean 3.4%; the runs'
/// own step-to-step spread is 3-5%), so that a difference the model cannot tell apart never costs
/// the room a plan needs against the memory model's error.
pub const STEP_TIME_TOLERANCE: f64 = 0.07;

/// The room a plan should leave beyond what it is predicted to need, as a fraction of that need:
/// the budget model's bound (within 5% of the measured peaks, issue 15).
pub const ROOM_WANTED: f64 = 0.05;

/// Room left on the tightest GPU (usable less what the run needs).
pub fn room(c: &Candidate) -> u64 {
    c.usable_bytes.saturating_sub(c.required_bytes)
}

/// Whether `c` leaves less room than the budget model's error.
pub fn tight(c: &Candidate) -> bool {
    (room(c) as f64) < ROOM_WANTED * c.required_bytes as f64
}
