//! Regenerates `src/generated/quail_capnp.rs` from `schema/quail.capnp`.
//!
//! `cargo run -p quail-protocol --example regen`
//!
//! The schema compiler runs in-process (capnpc-embedded), so no system
//! `capnp` is needed. `tests/drift.rs` fails when the committed code and the
//! schema disagree.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = generate(root).unwrap_or_else(|e| {
        eprintln!("regen: {e}");
        std::process::exit(1);
    });
    let out = root.join("src/generated/quail_capnp.rs");
    if let Err(e) = std::fs::write(&out, code) {
        eprintln!("regen: writing {}: {e}", out.display());
        std::process::exit(1);
    }
    println!("wrote {}", out.display());
}

include!("../tests/support/generate.rs");
