//! Client for BIRD's control socket protocol.
