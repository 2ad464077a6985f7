//! A tiny VNF for the daemon's tests: a nested struct, a list, and numbers with rules.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::{ConfigError, VnfApp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Raw {
    pub name: String,
    pub underlay: Underlay,
    pub vnis: Vec<RawVni>,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            name: "fake".into(),
            underlay: Underlay::default(),
            vnis: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Underlay {
    pub port: u16,
    pub address: String,
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay {
            port: 4789,
            address: "0.0.0.0".into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawVni {
    pub id: u32,
    pub flood: Vec<String>,
}

#[derive(Debug)]
pub struct Config {
    pub name: String,
    pub port: u16,
    pub vnis: Vec<(u32, Vec<Ipv4Addr>)>,
}

#[derive(Debug)]
pub struct Fake {
    pub config: Mutex<Arc<Config>>,
    pub ready: AtomicBool,
    pub stopped: AtomicBool,
}

impl Fake {
    pub fn port(&self) -> u16 {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .port
    }
}

impl VnfApp for Fake {
    const NAME: &'static str = "vnf-fake";
    type Raw = Raw;
    type Config = Config;

    fn compile(raw: &Raw) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if raw.name.is_empty() {
            errors.push(ConfigError::new("name", "must not be empty"));
        }
        if raw.underlay.port == 0 {
            errors.push(ConfigError::new("underlay.port", "port 0 is reserved"));
        }
        let mut vnis = Vec::new();
        for (i, vni) in raw.vnis.iter().enumerate() {
            if !(1..=0xff_ffff).contains(&vni.id) {
                errors.push(ConfigError::new(
                    format!("vnis[{i}].id"),
                    format!("VNI {} is outside 1..=16777215", vni.id),
                ));
            }
            let mut flood = Vec::new();
            for (j, peer) in vni.flood.iter().enumerate() {
                match peer.parse() {
                    Ok(ip) => flood.push(ip),
                    Err(_) => errors.push(ConfigError::new(
                        format!("vnis[{i}].flood[{j}]"),
                        format!("`{peer}` is not an IPv4 address"),
                    )),
                }
            }
            vnis.push((vni.id, flood));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            name: raw.name.clone(),
            port: raw.underlay.port,
            vnis,
        })
    }

    fn start(config: Arc<Config>, _registry: &prometheus::Registry) -> Result<Self, String> {
        Ok(Fake {
            config: Mutex::new(config),
            ready: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        })
    }

    fn reload(&self, config: Arc<Config>) -> Result<(), String> {
        if config.name == "refuse" {
            return Err("the datapath refuses this one".into());
        }
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// Write `yaml` to `vnf.yaml` in a new temporary directory (kept alive by the first value).
pub fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vnf.yaml");
    std::fs::write(&file, yaml).expect("write config");
    (dir, file)
}
