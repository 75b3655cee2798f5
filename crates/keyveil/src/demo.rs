//! `keyveil demo` (being written).

/// Runs the demo.
pub fn main() -> anyhow::Result<i32> {
    anyhow::bail!("the demo is not built yet")
}
