//! Key encoding: big-endian fixed-width integers and length-safe byte
//! strings, so byte order equals tuple order and range scans come out sorted.

/// Builds a composite key.
#[derive(Debug, Default, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// An empty key.
    pub fn new() -> Self {
        Key(Vec::with_capacity(32))
    }

    /// Appends a `u64`, big-endian.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends one byte (a tag).
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }

    /// Appends raw bytes. Only as the last component, or for fixed-width
    /// values: variable-length bytes in the middle would break ordering.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }

    /// The encoded key.
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

impl From<Key> for Vec<u8> {
    fn from(k: Key) -> Vec<u8> {
        k.0
    }
}

/// Reads the big-endian `u64` at `offset`, if the key is long enough.
pub fn read_u64(key: &[u8], offset: usize) -> Option<u64> {
    let bytes = key.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (the prefix is all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last != 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_tuple_order() {
        let a = Key::new().u64(1).u64(300).build();
        let b = Key::new().u64(2).u64(1).build();
        let c = Key::new().u64(2).u64(256).build();
        assert!(a < b && b < c);
        assert_eq!(read_u64(&c, 8), Some(256));
        assert_eq!(read_u64(&c, 9), None);
    }

    #[test]
    fn successor() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(&[]), None);
    }
}
