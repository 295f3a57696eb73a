//! FUSE adapter (placeholder)
