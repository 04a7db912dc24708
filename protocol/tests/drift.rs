//! The committed generated code must be exactly what the schema produces.

use std::path::Path;

include!("support/generate.rs");

#[test]
fn generated_code_matches_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fresh = generate(root).expect("generate from schema");
    let committed = std::fs::read_to_string(root.join("src/generated/quail_capnp.rs"))
        .expect("read committed generated code");
    assert!(
        fresh == committed,
        "protocol/src/generated/quail_capnp.rs is out of date with schema/quail.capnp: \
         run `cargo run -p quail-protocol --example regen` and commit the result"
    );
}
