//! Replays every committed fuzz input through its target's body on stable Rust: the corpus
//! each campaign left (`fuzz/corpus/<target>/`) and every input that once made a target
//! fail (`fuzz/regressions/<target>/`). A target body panics when an invariant breaks, so a
//! regression that comes back fails here, in every `cargo test`, with no fuzzer installed.

use std::fs;
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_target_has_an_entry_point_and_a_corpus() {
    for t in keel_fuzz::TARGETS {
        let entry = fuzz_dir()
            .join("fuzz_targets")
            .join(format!("{}.rs", t.name));
        assert!(entry.is_file(), "target {}: no {}", t.name, entry.display());
        let corpus = inputs(&fuzz_dir().join("corpus").join(t.name));
        assert!(
            !corpus.is_empty(),
            "target {}: fuzz/corpus/{} is empty (run `make fuzz` and commit the minimised corpus)",
            t.name,
            t.name
        );
    }
}

#[test]
fn every_entry_point_is_a_registered_target() {
    for file in inputs(&fuzz_dir().join("fuzz_targets")) {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            keel_fuzz::target(&stem).is_some(),
            "fuzz/fuzz_targets/{stem}.rs has no entry in keel_fuzz::TARGETS"
        );
    }
}

#[test]
fn committed_corpora_and_regressions_keep_every_invariant() {
    let mut replayed = 0usize;
    for t in keel_fuzz::TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in inputs(&fuzz_dir().join(kind).join(t.name)) {
                let data = fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| (t.run)(&data));
                assert!(
                    outcome.is_ok(),
                    "target {}: input {} breaks an invariant (replay: cargo test -p keel-fuzz --test corpus)",
                    t.name,
                    file.display()
                );
                replayed += 1;
            }
        }
    }
    println!("replayed {replayed} committed fuzz inputs");
}
