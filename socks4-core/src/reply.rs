//! The server's 8-byte reply.

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

use crate::error::ParseError;
use crate::request::Status;

/// Length of every reply on the wire.
pub const REPLY_LEN: usize = 8;

/// The reply's result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 90: request granted.
    Granted,
    /// 91: request rejected or failed.
    Rejected,
    /// 92: rejected because the server cannot reach the client's identd.
    IdentUnreachable,
    /// 93: rejected because identd reported a different user id.
    IdentMismatch,
}

impl ReplyCode {
    /// The code's byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Granted => 90,
            Self::Rejected => 91,
            Self::IdentUnreachable => 92,
            Self::IdentMismatch => 93,
        }
    }

    /// The code for a wire byte, if it is one.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            90 => Some(Self::Granted),
            91 => Some(Self::Rejected),
            92 => Some(Self::IdentUnreachable),
            93 => Some(Self::IdentMismatch),
            _ => None,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Granted => "granted",
            Self::Rejected => "rejected or failed",
            Self::IdentUnreachable => "rejected: identd unreachable",
            Self::IdentMismatch => "rejected: identd user id differs",
        };
        write!(f, "{} ({text})", self.code())
    }
}

/// A reply: result code plus an address (the bound address for CONNECT, the listening or peer
/// address for BIND, zeros when there is nothing to say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reply {
    /// Result code.
    pub code: ReplyCode,
    /// Address and port carried by the reply.
    pub addr: SocketAddrV4,
}

impl Reply {
    /// A reply with the given code and address.
    pub const fn new(code: ReplyCode, addr: SocketAddrV4) -> Self {
        Self { code, addr }
    }

    /// A reply with code 91 and a zero address.
    pub const fn rejected() -> Self {
        Self::new(ReplyCode::Rejected, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }

    /// The 8 bytes on the wire (VN = 0).
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::{Reply, ReplyCode};
    /// let reply = Reply::new(ReplyCode::Granted, SocketAddrV4::new([127, 0, 0, 1].into(), 1080));
    /// assert_eq!(reply.to_bytes(), [0, 90, 0x04, 0x38, 127, 0, 0, 1]);
    /// ```
    pub const fn to_bytes(self) -> [u8; REPLY_LEN] {
        let [p0, p1] = self.addr.port().to_be_bytes();
        let [a, b, c, d] = self.addr.ip().octets();
        [0, self.code.code(), p0, p1, a, b, c, d]
    }

    /// Parses a reply from the start of `buf`; a complete reply always uses [`REPLY_LEN`] bytes.
    ///
    /// The version byte is checked as soon as it arrives, the code as soon as it arrives.
    ///
    /// ```
    /// use socks4_core::{Reply, ReplyCode, Status};
    /// let Status::Complete(reply) = Reply::parse(&[0, 91, 0, 0, 0, 0, 0, 0])? else { panic!() };
    /// assert_eq!(reply.code, ReplyCode::Rejected);
    /// assert_eq!(Reply::parse(&[0, 90, 0])?, Status::Partial);
    /// # Ok::<(), socks4_core::ParseError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ParseError::BadReplyVersion`] when the first byte is not 0, [`ParseError::BadReplyCode`]
    /// when the second is not 90 to 93.
    pub fn parse(buf: &[u8]) -> Result<Status<Self>, ParseError> {
        if let Some(&vn) = buf.first() {
            if vn != 0 {
                return Err(ParseError::BadReplyVersion(vn));
            }
        }
        let code = match buf.get(1) {
            Some(&cd) => ReplyCode::from_code(cd).ok_or(ParseError::BadReplyCode(cd))?,
            None => return Ok(Status::Partial),
        };
        let Some(b) = buf.get(..REPLY_LEN) else {
            return Ok(Status::Partial);
        };
        let port = u16::from_be_bytes([b[2], b[3]]);
        let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
        Ok(Status::Complete(Self::new(code, SocketAddrV4::new(ip, port))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [ReplyCode::Granted, ReplyCode::Rejected, ReplyCode::IdentUnreachable, ReplyCode::IdentMismatch] {
            assert_eq!(ReplyCode::from_code(code.code()), Some(code));
            let reply = Reply::new(code, SocketAddrV4::new([1, 2, 3, 4].into(), 0x0102));
            assert_eq!(Reply::parse(&reply.to_bytes()), Ok(Status::Complete(reply)));
        }
        assert_eq!(ReplyCode::from_code(89), None);
        assert_eq!(std::format!("{}", ReplyCode::Rejected), "91 (rejected or failed)");
    }

    #[test]
    fn parse_errors_and_partials() {
        assert_eq!(Reply::parse(&[]), Ok(Status::Partial));
        assert_eq!(Reply::parse(&[0]), Ok(Status::Partial));
        assert_eq!(Reply::parse(&[4, 90]), Err(ParseError::BadReplyVersion(4)));
        assert_eq!(Reply::parse(&[0, 94]), Err(ParseError::BadReplyCode(94)));
        assert_eq!(Reply::parse(&[0, 90, 0, 0, 0, 0, 0]), Ok(Status::Partial));
        assert_eq!(Reply::rejected().to_bytes(), [0, 91, 0, 0, 0, 0, 0, 0]);
    }
}
