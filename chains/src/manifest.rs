//! The plan's manifest (`plan.yaml`): which instances a planned chain runs and where.
//!
//! `vnfctl plan` writes it beside the instances' config files; `up`, `status`, `apply` and
//! `down` read it. Paths in it are relative to the plan directory, so a plan can be moved.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The manifest's file name inside a plan directory.
pub const MANIFEST: &str = "plan.yaml";
/// The Prometheus scrape configuration's file name inside a plan directory.
pub const PROMETHEUS: &str = "prometheus.yml";

/// What kind of network function an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `vnf-router`.
    Router,
    /// `vnf-firewall`.
    Firewall,
    /// `vnf-lb`.
    Lb,
}

impl Kind {
    /// The program that runs this kind.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Router => "vnf-router",
            Kind::Firewall => "vnf-firewall",
            Kind::Lb => "vnf-lb",
        }
    }

    /// The name used in the chain file (`kind:`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Router => "router",
            Kind::Firewall => "firewall",
            Kind::Lb => "lb",
        }
    }
}

/// One function instance of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// The function's name in the chain file (unique in the tenant).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its underlay address (its VTEP).
    pub host: Ipv4Addr,
    /// Its admin endpoint (`/metrics`, `/readyz`, `/reload`).
    pub admin: SocketAddr,
    /// Its config file, relative to the plan directory.
    pub config: String,
}

/// The manifest of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The tenant the chain belongs to.
    pub tenant: String,
    /// The instances, in the order of the chain file's `functions:`.
    pub instances: Vec<Instance>,
}

impl Manifest {
    /// Read `DIR/plan.yaml`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
        serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a plan manifest: {e}", file.display()))
    }

    /// The manifest as YAML.
    pub fn to_yaml(&self) -> String {
        // Plain data of our own types: serialization cannot fail.
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// The absolute path of `instance`'s config file in plan directory `dir`.
    pub fn config_path(dir: &Path, instance: &Instance) -> PathBuf {
        dir.join(&instance.config)
    }
}
