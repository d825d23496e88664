//! One file per command; each resolves what it needs through `settings` and returns its exit code.

pub(super) mod calibrate;
pub(super) mod doctor;
pub(super) mod gpus;
pub(super) mod plan;
pub(super) mod profiles;
pub(super) mod replay;
pub(super) mod runs;
pub(super) mod train;
