//! What the chains integration tests share: the VNF binaries they run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's `target` directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The directory with `vnf-router`, `vnf-firewall` and `vnf-lb` (`--bin-dir`): built once
/// per test binary (`cargo build -p vnf-router -p vnf-firewall -p vnf-lb --bins`, a no-op
/// when they are fresh).
pub fn vnf_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "vnf-router",
                "-p",
                "vnf-firewall",
                "-p",
                "vnf-lb",
                "--bins",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of the VNF binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = target_dir().join("debug");
        for bin in ["vnf-router", "vnf-firewall", "vnf-lb"] {
            assert!(
                dir.join(bin).exists(),
                "{} missing after the build",
                dir.join(bin).display()
            );
        }
        dir
    })
}
