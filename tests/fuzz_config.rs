//! The `vnf_config` fuzz target: each VNF's config file — YAML parsed into its `RawConfig`
//! and compiled by its `VnfApp::compile` — on arbitrary text. The first byte picks the VNF
//! (router, firewall, load balancer); the rest is the file.

use overlay_io::daemon::VnfApp;

/// Parse and compile `data[1..]` as the config of VNF `data[0] % 3`. Never panics; a
/// refusal names at least one problem, each with a message.
pub fn vnf_config(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match which % 3 {
        0 => check::<vnf_router::RouterApp>(text),
        1 => check::<vnf_firewall::FirewallApp>(text),
        _ => check::<vnf_lb::LbApp>(text),
    }
}

fn check<A: VnfApp>(text: &str) {
    let Ok(raw) = serde_saphyr::from_str::<A::Raw>(text) else {
        return;
    };
    if let Err(errors) = A::compile(&raw) {
        assert!(!errors.is_empty(), "{}: refused without a reason", A::NAME);
        for e in &errors {
            assert!(
                !e.message.is_empty(),
                "{}: an empty message at {}",
                A::NAME,
                e.path
            );
        }
    }
}

/// Seeds: every example config of the three VNFs and the configs planned from the chain
/// examples (the golden files), each behind its VNF's selector byte.
pub fn vnf_config_seeds() -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in [
        "examples",
        "chains/tests/golden/chain-demo",
        "chains/tests/golden/chain-three-tier",
    ] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    files.sort();
    let mut seeds = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let which = if text.contains("\nzones:") || text.contains("\npolicies:") {
            1
        } else if text.contains("\nservices:") || text.contains("\npools:") {
            2
        } else if text.contains("\nports:") {
            0
        } else {
            continue; // a chain file, a manifest, prometheus.yml
        };
        let name = format!(
            "seed-{}-{}",
            f.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut data = vec![which];
        data.extend(text.as_bytes());
        seeds.push((name, data));
    }
    seeds
}
