//! Embeds the kernel programs' object, built by `cargo xtask build-ebpf`.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let object = env::var_os("LB_EBPF_OBJECT").map_or_else(
        || {
            PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
                .join("../lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf")
        },
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("lb-ebpf.o");
    if let Err(e) = fs::copy(&object, &out) {
        panic!(
            "cannot read the eBPF object {}: {e}. Build it first with `cargo xtask build` \
             (or `cargo xtask build-ebpf`), or point LB_EBPF_OBJECT at it.",
            object.display()
        );
    }
}
