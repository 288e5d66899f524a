//! GitHub: the runner registrations of a repository or organization. One client
//! (`client.rs`: transport, authentication, retries, rate limits, ETags, request counts), its
//! reads (`read.rs`) and its writes (`write.rs`, paced), as docs/architecture.md draws them.

mod auth;
mod client;
mod endpoint;
mod error;
mod http;
pub mod pacing;
mod read;
mod retry;
mod runs;
mod stats;
mod write;

pub use auth::{Credentials, GithubScope, registration_url};
pub use client::{Answer, GithubClient};
pub use endpoint::{API_URL_ENV, ApiEndpoint};
pub use error::GithubError;
pub use http::next_link;
pub use read::GithubRead;
pub use retry::RetryPolicy;
pub use runs::{WorkflowJob, WorkflowRun};
pub use stats::RequestStats;
pub use write::{GithubWrite, JitConfig, Removal};
