//! `chains`: declarative service chains in YAML and the `vnfctl` tool.
//!
//! - [`spec`]: the chain file as written, parsed with every problem at its line and column.
//! - [`plan`]: validation and the planner: one config per function instance, the manifest,
//!   a Prometheus scrape configuration (docs/chains.md says what it allocates and why).
//! - [`manifest`]: `plan.yaml`, which instances run where.
//! - [`supervise`]: the supervisor behind `vnfctl up`, `status` and `down`.
//! - [`apply`]: moving a running chain to a new plan, with rollback.
//! - [`probe`]: synthetic tenant hosts (smoltcp behind their own VXLAN VTEP).
//! - [`image`]: VM images per function kind and a NoCloud seed per instance.
//! - [`admin_client`]: a small HTTP client for the functions' admin endpoints.
//! - [`cli`]: what each subcommand does.

pub mod admin_client;
pub mod apply;
pub mod cli;
pub mod image;
pub mod manifest;
pub mod plan;
pub mod probe;
pub mod spec;
pub mod supervise;
