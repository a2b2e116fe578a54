//! A plain STUN Binding responder (RFC 8489) on the WHIP port, so the relay is the STUN server
//! its own clients need to learn their public address. str0m answers its sessions' signed ICE
//! checks; its parser refuses unsigned requests, so these few fixed fields are read here.
//!
//! Bounded against reflection: only a well-formed Binding request (at most [`MAX_REQUEST`]
//! bytes) gets an answer, the answer is one XOR-MAPPED-ADDRESS (32 bytes for IPv4, 44 for
//! IPv6), and the port sends at most [`REPLIES_PER_SECOND`] of them in all (sources can be
//! spoofed, so a per-source allowance would not bound anything).

use std::net::{IpAddr, SocketAddr};

/// The magic cookie every RFC 5389/8489 message carries.
const MAGIC_COOKIE: u32 = 0x2112_a442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Binding responses the port sends per second, whoever asks.
pub const REPLIES_PER_SECOND: u32 = 100;

/// Largest request answered (a request padded to make the answer small relative to it is
/// fine; a huge one is not worth reading).
pub const MAX_REQUEST: usize = 548;

/// The transaction id of a Binding request, if `packet` is one.
pub fn binding_request(packet: &[u8]) -> Option<[u8; 12]> {
    if packet.len() < 20 || packet.len() > MAX_REQUEST {
        return None;
    }
    let kind = u16::from_be_bytes([packet[0], packet[1]]);
    let length = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if kind != BINDING_REQUEST || cookie != MAGIC_COOKIE || length + 20 != packet.len() {
        return None;
    }
    packet[8..20].try_into().ok()
}

/// The Binding success response telling `source` its address.
pub fn binding_response(transaction: [u8; 12], source: SocketAddr) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let (family, address): (u8, Vec<u8>) = match source.ip().to_canonical() {
        IpAddr::V4(ip) => (
            1,
            ip.octets().iter().zip(cookie).map(|(b, c)| b ^ c).collect(),
        ),
        IpAddr::V6(ip) => {
            let key: Vec<u8> = cookie.iter().chain(transaction.iter()).copied().collect();
            (2, ip.octets().iter().zip(key).map(|(b, k)| b ^ k).collect())
        }
    };
    let value_len = 4 + address.len();
    let mut out = Vec::with_capacity(20 + 4 + value_len);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&((4 + value_len) as u16).to_be_bytes());
    out.extend_from_slice(&cookie);
    out.extend_from_slice(&transaction);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(value_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&address);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: [u8; 12]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01, 0x00, 0x00];
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&id);
        r
    }

    #[test]
    fn a_binding_request_gets_the_source_address_back() {
        let id = [7u8; 12];
        assert_eq!(binding_request(&request(id)), Some(id));
        let source: SocketAddr = "192.0.2.10:54321".parse().unwrap();
        let r = binding_response(id, source);
        assert_eq!(r.len(), 32);
        assert_eq!(&r[0..2], &[0x01, 0x01]);
        assert_eq!(&r[8..20], &id);
        let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
        let ip: Vec<u8> = r[28..32]
            .iter()
            .zip(MAGIC_COOKIE.to_be_bytes())
            .map(|(b, c)| b ^ c)
            .collect();
        assert_eq!((port, ip), (54321, vec![192, 0, 2, 10]));
        assert_eq!(
            binding_response(id, "[2001:db8::1]:9".parse().unwrap()).len(),
            44
        );
    }

    #[test]
    fn anything_else_gets_nothing() {
        let mut wrong_cookie = request([1; 12]);
        wrong_cookie[4] = 0;
        assert_eq!(binding_request(&wrong_cookie), None);
        let mut response = request([1; 12]);
        response[1] = 0x01;
        response[0] = 0x01;
        assert_eq!(binding_request(&response), None);
        let mut lying_length = request([1; 12]);
        lying_length[3] = 8;
        assert_eq!(binding_request(&lying_length), None);
        assert_eq!(binding_request(&[0; 19]), None);
        assert_eq!(binding_request(&vec![0; 2000]), None);
    }
}
