//! The local directory backend (to be written).
