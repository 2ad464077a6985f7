//! Ports, the packet engine, and the worker threads that run I/O around a network function.
//!
//! - [`config`]: the shared `underlay:`/`ports:` config section, raw and typed.
//! - [`engine`]: the sans-IO per-worker engine (VTEP decap/encap, VLAN tags, flooding).
//! - [`runtime`]: worker threads over real sockets, hot reload, shutdown.

pub mod config;
pub mod engine;
pub mod runtime;

pub use config::{DatapathConfig, Port, PortKind, RawPort, RawUnderlay, Tuning, Underlay};
pub use engine::{Engine, Installed};
pub use runtime::{Datapath, DatapathError};
