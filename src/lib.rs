//! fleet keeps self-hosted GitHub Actions runners on Docker GPU hosts equal to `fleet.yaml`.
//!
//! The library holds everything; the `fleet` binary is a thin shell over [`cli`].

pub mod cli;
pub mod spec;
