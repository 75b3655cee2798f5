//! keyveil binary.
fn main() {}
