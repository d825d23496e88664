//! Launch profiles (YAML): lookup, overrides, validation.
