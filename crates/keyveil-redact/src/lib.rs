//! Streaming redaction (placeholder).
