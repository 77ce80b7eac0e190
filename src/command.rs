//! Running check and reload commands with timeouts.
