//! Exhaustive search over candidate configurations. Pure.
