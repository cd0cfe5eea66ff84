//! switchboard: real-time messaging servers for WebSocket and raw TCP, on tokio.
//!
//! Write one type that implements [`MessageComponent`] and serve it on any
//! transport. See the crate README and `docs/guide.md`.

pub use switchboard_core::*;

/// The WebSocket transport (feature `ws`, on by default).
#[cfg(feature = "ws")]
#[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
pub use switchboard_ws as ws;

/// The framed TCP transport: lines, length-delimited frames, raw bytes or
/// your own codec (feature `tcp`).
#[cfg(feature = "tcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "tcp")))]
pub use switchboard_tcp as tcp;
