//! Checked little-endian readers and writers over borrowed byte slices.
//!
//! Everything that reads peer input goes through [`Reader`]: every read is
//! bounds-checked and a short buffer is an error value, never a panic.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Address type tag for IPv4 in tokens (the standard's format tables; see the
/// module docs for the erratum about `[0,1]`).
const ADDRESS_IPV4: u8 = 1;
/// Address type tag for IPv6 in tokens.
const ADDRESS_IPV6: u8 = 2;

/// The input ended before a read completed, or a value was out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShortOrInvalid;

/// Reads little-endian values from a byte slice with bounds checks.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ShortOrInvalid> {
        let (head, tail) = self.rest.split_at_checked(n).ok_or(ShortOrInvalid)?;
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ShortOrInvalid> {
        let head = self.bytes(N)?;
        head.try_into().map_err(|_| ShortOrInvalid)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ShortOrInvalid> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ShortOrInvalid> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ShortOrInvalid> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ShortOrInvalid> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn address(&mut self) -> Result<SocketAddr, ShortOrInvalid> {
        match self.u8()? {
            ADDRESS_IPV4 => {
                let octets: [u8; 4] = self.array()?;
                let port = self.u16()?;
                Ok(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(octets),
                    port,
                )))
            }
            ADDRESS_IPV6 => {
                let mut segments = [0u16; 8];
                for segment in &mut segments {
                    *segment = self.u16()?;
                }
                let port = self.u16()?;
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(segments),
                    port,
                    0,
                    0,
                )))
            }
            _ => Err(ShortOrInvalid),
        }
    }
}

/// Writes little-endian values into a byte slice with bounds checks.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[cfg(test)]
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) -> Result<(), ShortOrInvalid> {
        let end = self.pos.checked_add(bytes.len()).ok_or(ShortOrInvalid)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(ShortOrInvalid)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), ShortOrInvalid> {
        self.bytes(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), ShortOrInvalid> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), ShortOrInvalid> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<(), ShortOrInvalid> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn address(&mut self, address: SocketAddr) -> Result<(), ShortOrInvalid> {
        match address {
            SocketAddr::V4(a) => {
                self.u8(ADDRESS_IPV4)?;
                self.bytes(&a.ip().octets())?;
                self.u16(a.port())
            }
            SocketAddr::V6(a) => {
                self.u8(ADDRESS_IPV6)?;
                for segment in a.ip().segments() {
                    self.u16(segment)?;
                }
                self.u16(a.port())
            }
        }
    }

    /// Zero-fills the rest of the buffer.
    pub(crate) fn zero_pad(&mut self) {
        if let Some(rest) = self.buf.get_mut(self.pos..) {
            rest.fill(0);
        }
        self.pos = self.buf.len();
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    reason = "tests index fixed-size buffers they just filled"
)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_short_reads_fail() {
        let addrs: [SocketAddr; 2] = ["1.2.3.4:5".parse().unwrap(), "[::1]:50000".parse().unwrap()];
        for addr in addrs {
            let mut buf = [0u8; 32];
            let mut w = Writer::new(&mut buf);
            w.address(addr).unwrap();
            let n = w.position();
            assert_eq!(Reader::new(&buf[..n]).address(), Ok(addr));
            for cut in 0..n {
                assert_eq!(Reader::new(&buf[..cut]).address(), Err(ShortOrInvalid));
            }
        }
        assert_eq!(
            Reader::new(&[0, 1, 2, 3, 4, 5, 6]).address(),
            Err(ShortOrInvalid)
        );
        assert_eq!(
            Reader::new(&[3, 1, 2, 3, 4, 5, 6]).address(),
            Err(ShortOrInvalid)
        );
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        assert!(w.u16(1).is_ok());
        assert_eq!(w.u16(2), Err(ShortOrInvalid));
        assert_eq!(w.position(), 2);
    }
}
