//! Integration tests of the fake GitHub, in one test binary to keep builds short.

mod behaviour;
mod binary;
mod common;
mod configure;
mod conformance;
mod pagination;
mod scaleset;
