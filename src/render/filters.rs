//! Filters: confd-style helpers and validation filters for routing values.
