//! Replays the `chain_spec` fuzz corpus (`fuzz/corpus/chain_spec/`: the examples as seeds,
//! a file with an error of each class, and what `scripts/fuzz chain_spec` kept) through
//! the fuzz target's body, so every input that found new coverage or once crashed stays a
//! regression test.

use std::path::Path;

#[test]
fn chain_spec_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/chain_spec");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 4,
        "corpus {} is nearly empty",
        dir.display()
    );
    let mut failed = Vec::new();
    for p in &inputs {
        let data = std::fs::read(p).expect("read");
        if std::panic::catch_unwind(|| chains::plan::fuzz_plan(&data)).is_err() {
            failed.push(p.display().to_string());
        }
    }
    println!(
        "chain_spec: replayed {} inputs, {} failed",
        inputs.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed: {failed:#?}");
}
