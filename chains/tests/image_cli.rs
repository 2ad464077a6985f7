//! `vnfctl image` without its tools: it stops before doing anything and names the Debian
//! package to install.

use std::process::Command;

#[test]
fn a_missing_tool_is_named_with_its_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chain =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/chain-one-hop.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_vnfctl"))
        .arg("image")
        .arg(&chain)
        .arg("--out")
        .arg(dir.path().join("images"))
        .env("PATH", dir.path())
        .output()
        .expect("run vnfctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "succeeded without any tool: {stderr}"
    );
    assert!(
        stderr.contains("found") && stderr.contains("install the Debian package"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("images").exists(),
        "wrote output before failing"
    );
}
