//! Messages: text or binary payloads over reference-counted [`Bytes`].

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// A UTF-8 string over [`Bytes`]: cloning it is O(1) and copies no payload.
///
/// The invariant (the bytes are valid UTF-8) is checked once, when the value
/// is built from bytes; afterwards [`as_str`](Self::as_str) is free.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps a static string without copying it.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` that were already checked as `text`, without checking
    /// them again: O(1) when `text` is a string over exactly the memory of
    /// `bytes` (for example a transport's own UTF-8 type over the same
    /// buffer), which proves they are valid UTF-8 since [`Bytes`] never
    /// changes what it shares. Otherwise the bytes are validated as in
    /// `TryFrom<Bytes>`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use switchboard::Utf8Bytes;
    ///
    /// let bytes = Bytes::from("héllo");
    /// let text = std::str::from_utf8(&bytes).unwrap(); // checked once, here
    /// let checked = Utf8Bytes::from_validated(bytes.clone(), text).unwrap();
    /// assert_eq!(checked, "héllo");
    /// // A valid string elsewhere proves nothing about other bytes.
    /// assert!(Utf8Bytes::from_validated(Bytes::from_static(b"\xff"), "ok").is_err());
    /// assert_eq!(Utf8Bytes::from_validated(bytes, &String::from("héllo")).unwrap(), "héllo");
    /// ```
    pub fn from_validated(bytes: Bytes, text: &str) -> Result<Self, std::str::Utf8Error> {
        if bytes.as_ptr() == text.as_ptr() && bytes.len() == text.len() {
            Ok(Self(bytes))
        } else {
            Self::try_from(bytes)
        }
    }

    /// The text as a `&str`.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor of `Utf8Bytes` either takes a `str`/`String`
        // or validates the bytes with `std::str::from_utf8`, and the inner
        // `Bytes` is never exposed mutably.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes (a cheap clone).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives back the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;
    #[inline]
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        // Most text on the wire is ASCII, which a word-at-a-time scan
        // checks in a fraction of the full validation's time.
        if !bytes.is_ascii() {
            std::str::from_utf8(&bytes)?;
        }
        Ok(Self(bytes))
    }
}

impl TryFrom<Vec<u8>> for Utf8Bytes {
    type Error = std::str::Utf8Error;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        Self::try_from(Bytes::from(v))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(s: Utf8Bytes) -> Self {
        s.0
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One application message: text or binary.
///
/// Both variants hold reference-counted buffers, so `clone()` is O(1): a
/// broadcast to ten thousand connections copies no payload. Control frames
/// (ping, pong, close) are the transport's business and never appear here.
///
/// ```
/// use switchboard::Message;
///
/// let m = Message::text("hello");
/// assert_eq!(m.as_text(), Some("hello"));
/// assert_eq!(m.len(), 5);
/// let b = Message::binary(vec![1u8, 2, 3]);
/// assert!(b.is_binary());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A UTF-8 text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self, Message::Binary(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t.as_str()),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The payload as [`Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self {
            Message::Text(t) if t.len() <= SHOWN => {
                f.debug_tuple("Text").field(&t.as_str()).finish()
            }
            Message::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Message::Binary(b) if b.len() <= SHOWN => f.debug_tuple("Binary").field(b).finish(),
            Message::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}

impl From<Utf8Bytes> for Message {
    fn from(s: Utf8Bytes) -> Self {
        Message::Text(s)
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(v.into())
    }
}

impl From<&[u8]> for Message {
    fn from(v: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_anywhere_is_still_validated() {
        // Every length around the word sizes of the ASCII fast path, a
        // non-ASCII byte at every position: invalid UTF-8 is refused and
        // valid UTF-8 accepted.
        for len in 0..80 {
            let ascii = vec![b'a'; len];
            assert!(Utf8Bytes::try_from(ascii.clone()).is_ok(), "{len}");
            for at in 0..len {
                let mut bytes = ascii.clone();
                bytes[at] = 0xff;
                assert!(Utf8Bytes::try_from(bytes.clone()).is_err(), "{len} {at}");
                bytes[at] = 0xc3;
                bytes.insert(at + 1, 0xa9); // é
                assert!(Utf8Bytes::try_from(bytes).is_ok(), "{len} {at}");
            }
        }
    }
}
