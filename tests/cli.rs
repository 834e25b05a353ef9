//! The `exp` binary: clear errors for bad input, the schema listing.

use std::process::{Command, Output};

fn exp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exp")).args(args).env_remove("OPTLAB_DATA_DIR").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_optimizer_is_a_clear_error() {
    let o = exp(&["split-mnist", "--optimizers", "sgd,adamm"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("adamm") && e.contains("known: sgd, adamw, lion, muon, shampoo, soap"), "{e}");
}

#[test]
fn misspelled_config_key_is_a_clear_error() {
    let o = exp(&["split-mnist", "--set", "optimizer.muon.momentun=0.9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("momentun"), "{}", stderr(&o));
}

#[test]
fn corrupt_data_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::write(mnist.join(f), b"not an idx file").unwrap();
    }
    let o = exp(&["fetch", "mnist", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("-idx") && e.to_lowercase().contains("sha-256"), "{e}");
}

#[test]
fn a_cifar_archive_that_is_not_the_official_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar10");
    std::fs::create_dir_all(&cifar).unwrap();
    std::fs::write(cifar.join("cifar-10-binary.tar.gz"), b"truncated download").unwrap();
    let o = exp(&["vit", "--dataset", "cifar10", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("cifar-10-binary.tar.gz") && e.contains("not the official"), "{e}");
}

#[test]
fn schema_lists_every_table() {
    let o = exp(&["schema"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for t in optlab::record::schema::ALL {
        assert!(out.contains(&format!("`{}/`", t.name)), "{out}");
    }
    assert!(out.contains("Roy & Vetterli"));
}

#[test]
fn readme_shows_the_current_schema() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(optlab::record::schema::markdown().trim()), "README's schema is stale: paste `exp schema` into it");
}
