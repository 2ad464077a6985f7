//! `chains`: declarative service chains in YAML and the `vnfctl` tool.

pub mod admin_client;
pub mod apply;
pub mod cli;
pub mod manifest;
pub mod plan;
pub mod probe;
pub mod spec;
pub mod supervise;
