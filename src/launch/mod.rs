//! Command construction and supervision of torchrun.
//! OWNER: launch helper.

pub mod diagnosis;
