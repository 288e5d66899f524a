//! fleet keeps self-hosted GitHub Actions runners on Docker GPU hosts equal to `fleet.yaml`.
//!
//! The shape (docs/architecture.md): [`spec`] loads and validates the spec; [`contract`] holds
//! the runner contract (labels, ownership, names, configuration); [`state`] is the observation's
//! plain data, a leaf; [`docker`], [`github`] and [`scaleset`] are the one home of each outside
//! system, reads and writes apart; [`observe`] assembles what the readers see; [`plan`] is pure;
//! [`render`] prints one `Plan` three ways; [`apply`] is the only part that changes the world;
//! [`watch`] runs the same loop as a daemon; [`cmd`] holds each command's body and [`cli`] is the
//! only place that maps errors to exit codes. No module cycle (tests/module_graph.rs).

pub mod apply;
pub mod cli;
pub mod cmd;
pub mod contract;
pub mod docker;
pub mod escape;
pub mod fanout;
pub mod github;
pub mod history;
pub mod import;
pub mod labels;
pub mod logging;
pub mod named_file;
pub mod observe;
pub mod plan;
pub mod render;
pub mod scaleset;
pub mod secret;
pub mod spec;
pub mod state;
pub mod status;
pub mod this_machine;
pub mod watch;
pub mod web;
