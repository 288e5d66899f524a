//! fleet keeps self-hosted GitHub Actions runners on Docker GPU hosts equal to `fleet.yaml`.
//!
//! The shape (DESIGN.md section 5): [`spec`] loads and validates the spec; [`observe`] has one
//! observer per outside system; [`plan`] is pure; [`render`] prints one `Plan` three ways;
//! [`cli`] is the only place that maps errors to exit codes.

pub mod apply;
pub mod cli;
pub mod endpoint;
pub mod observe;
pub mod plan;
pub mod render;
pub mod secret;
pub mod spec;
pub mod status;
pub mod watch;
