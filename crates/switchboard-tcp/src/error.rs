//! The error type of switchboard-tcp: what the built-in codecs reject.

use std::io;

use switchboard_core::{BoxError, CloseCode};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a built-in [`Codec`](crate::Codec) refused the bytes it was given.
///
/// On a connection these become a core
/// [`Error::Protocol`](switchboard_core::Error::Protocol) with the close code
/// named on each variant, and close the connection (the crate docs say
/// how). Custom codecs may return these too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A line longer than the limit arrived (close code 1009). Detected as
    /// soon as the limit is passed without a line end, so at most the limit
    /// (plus one read) is ever buffered.
    #[error("line longer than the limit of {max} bytes")]
    LineTooLong {
        /// The limit in bytes, not counting the line end.
        max: usize,
    },

    /// A length prefix announced a frame longer than the limit (close code
    /// 1009). Detected from the prefix, before any of the frame is buffered.
    #[error("frame of {len} bytes is longer than the limit of {max} bytes")]
    FrameTooLong {
        /// The length the peer announced.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },

    /// A message to send does not fit the encoding (a length-delimited frame
    /// of 4 GiB or more). Nothing of it was written.
    #[error("message of {len} bytes is too long to encode")]
    MessageTooLong {
        /// The message length in bytes.
        len: usize,
    },

    /// A message to send on a lines connection is not one valid line: it
    /// holds `\n` or `\r`, or is binary and not UTF-8. Nothing of it was
    /// written. The codec's `Encoder` returns it; on a connection,
    /// [`Connection::send`](switchboard_core::Connection::send) refuses such
    /// a message before it is queued.
    #[error("message is not one line: {reason}")]
    InvalidLine {
        /// Why, as [`Codec::check_line`](crate::Codec::check_line) says.
        reason: &'static str,
    },

    /// A line was not valid UTF-8 (close code 1007).
    #[error("line is not valid UTF-8: {0}")]
    InvalidUtf8(#[from] std::str::Utf8Error),

    /// The peer ended the stream in the middle of a length-delimited frame
    /// (close code 1002).
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame (prefix included) that arrived.
        buffered: usize,
    },

    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// The close code this error closes a connection with, if it is a
    /// protocol error (`None` for I/O errors).
    ///
    /// ```
    /// use switchboard::tcp::Error;
    /// use switchboard::CloseCode;
    ///
    /// assert_eq!(Error::LineTooLong { max: 80 }.close_code(), Some(CloseCode::SIZE));
    /// ```
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Error::LineTooLong { .. }
            | Error::FrameTooLong { .. }
            | Error::MessageTooLong { .. } => Some(CloseCode::SIZE),
            Error::InvalidUtf8(_) => Some(CloseCode::INVALID),
            Error::InvalidLine { .. } => Some(CloseCode::ERROR),
            Error::Truncated { .. } => Some(CloseCode::PROTOCOL),
            Error::Io(_) => None,
        }
    }
}

impl From<Error> for switchboard_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(io) => switchboard_core::Error::Io(io),
            // Every other variant has a close code.
            err => {
                let code = err.close_code().unwrap_or(CloseCode::PROTOCOL);
                switchboard_core::Error::protocol(code, err)
            }
        }
    }
}

/// Turns any codec error into a core error, keeping the meaning of the
/// types it knows: this crate's [`Error`], a core error, an [`io::Error`].
/// Runs only on the error path, so the allocation of the box is no cost.
pub(crate) fn into_core<E>(err: E) -> switchboard_core::Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let boxed: BoxError = Box::new(err);
    let boxed = match boxed.downcast::<switchboard_core::Error>() {
        Ok(core) => return *core,
        Err(other) => other,
    };
    let boxed = match boxed.downcast::<Error>() {
        Ok(tcp) => return (*tcp).into(),
        Err(other) => other,
    };
    match boxed.downcast::<io::Error>() {
        Ok(io) => switchboard_core::Error::Io(*io),
        Err(other) => switchboard_core::Error::Protocol {
            code: CloseCode::PROTOCOL,
            source: other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bad header")]
    struct BadHeader;

    /// The close code of a protocol error; 0 for an I/O error.
    fn code(err: switchboard_core::Error) -> u16 {
        match err {
            switchboard_core::Error::Protocol { code, .. } => code.0,
            switchboard_core::Error::Io(_) => 0,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn codes_survive_conversion() {
        let core = switchboard_core::Error::protocol(CloseCode::POLICY, "nope");
        for (err, expected) in [
            (into_core(Error::LineTooLong { max: 3 }), 1009),
            (into_core(Error::FrameTooLong { len: 9, max: 3 }), 1009),
            (into_core(Error::Truncated { buffered: 2 }), 1002),
            (into_core(BadHeader), 1002),
            (into_core(core), 1008),
            (into_core(io::Error::other("reset")), 0),
            (into_core(Error::Io(io::ErrorKind::BrokenPipe.into())), 0),
        ] {
            assert_eq!(code(err), expected);
        }
    }
}
