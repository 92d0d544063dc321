//! Parsers for flag values written the way upstream OpenKruise (Go) writes them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A Go duration such as `15s`, `1m30s`, `250ms` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (examples: 15s, 1m30s, 250ms)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(value * secs).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A listen address: `:8080` (all interfaces, as Go writes it), `127.0.0.1:8080` or `[::1]:8080`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    s.parse().map_err(|_| format!("invalid listen address {s:?} (examples: :8080, 127.0.0.1:8080)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "15", "s", "10x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr(":8080").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(parse_listen_addr("127.0.0.1:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(parse_listen_addr("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_listen_addr(":http").is_err());
        assert!(parse_listen_addr("8080").is_err());
    }
}
