// Shared by `examples/regen.rs` and `tests/drift.rs`: schema -> Rust source.

/// Compiles the schema and returns the generated Rust source.
fn generate(root: &std::path::Path) -> Result<String, String> {
    let request = capnpc_embedded::CompileCommand::new()
        .src_prefix(root.join("schema"))
        .file(root.join("schema/quail.capnp"))
        .compile()
        .map_err(|e| format!("schema compile failed: {e}"))?;
    let out = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    capnpc::codegen::CodeGenerationCommand::new()
        .output_directory(out.path())
        .run(&request[..])
        .map_err(|e| format!("code generation failed: {e}"))?;
    std::fs::read_to_string(out.path().join("quail_capnp.rs"))
        .map_err(|e| format!("reading generated code: {e}"))
}
