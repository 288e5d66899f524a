//! GitHub: the runner registrations of a repository or organization. One client
//! (`client.rs`: authentication, retries, rate limits, ETags, request counts) over one
//! transport (`transport.rs`: proxies, TLS, User-Agent; the scale set client uses it too), its
//! reads (`read.rs`) and its writes (`write.rs`, paced), as docs/architecture.md draws them.

mod app;
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
pub mod transport;
mod write;

pub use app::AppRefusal;
pub use auth::{Credentials, GithubScope, registration_url};
pub use client::{Answer, GithubClient};
pub use endpoint::{API_URL_ENV, ApiEndpoint};
pub use error::{GithubError, JIT_MIN_GHES_VERSION};
pub use http::next_link;
pub use read::{GithubRead, find_group};
pub use retry::RetryPolicy;
pub use runs::{WorkflowJob, WorkflowRun};
pub use stats::RequestStats;
pub use transport::ProxyConfig;
pub use write::{GithubWrite, JitConfig, Removal};
