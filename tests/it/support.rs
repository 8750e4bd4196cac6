//! Shared helpers: start the real binary on free ports, wait for it, export with the official SDK.
