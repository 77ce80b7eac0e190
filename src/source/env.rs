//! The env source.
