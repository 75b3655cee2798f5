//! Vault (placeholder).
